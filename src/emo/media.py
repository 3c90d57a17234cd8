"""All media I/O of the project: images, audio, video in and out, and atomic file writes.

Everything goes through PyAV (bundled FFmpeg; there is no system ffmpeg) and Pillow, so the rest of the
code never touches a container format. Reading never loads a whole video: frames are streamed. Writing
never leaves a half-written file behind: outputs go to a temporary name in the same directory and are
renamed into place (``os.replace``, atomic on one filesystem) only when complete.

Every problem a user can fix (missing, empty, corrupt or unsupported file, unwritable output, an output
that exists, a full disk) raises :class:`~emo.errors.EmoError` with a one-line message naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from safetensors import SafetensorError

from emo.errors import EmoError

logger = logging.getLogger(__name__)

AUDIO_FORMATS = "wav, mp3, m4a, flac, ogg, or the audio track of mp4/mov"


# --------------------------------------------------------------------------------------------------
# Atomic writes: one home for "temp name in the same directory, then os.replace".
# --------------------------------------------------------------------------------------------------


# Errors writing a file that the user fixes (free space, a writable place), not bugs: one line, no partial file.
USER_WRITE_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
}


class WriteError(EmoError):
    """The disk refused an output (full, read-only, no permission): the user's to fix, and not a property of
    the input, so a preprocessing run stops on it instead of recording the video as failed."""


def write_error(exc: OSError, path: str | os.PathLike | None) -> EmoError:
    """The one-line EmoError for an OSError of :data:`USER_WRITE_ERRNOS` raised while writing ``path``."""
    reason = USER_WRITE_ERRNOS[exc.errno]
    return WriteError(f"{reason} writing {path}" if path else f"{reason} ({exc.strerror or exc})")


def _os_errno(exc: BaseException) -> int | None:
    """The errno of an OSError, or of an OSError that safetensors' Rust writer reports in its message
    ("... (os error 28)")."""
    if isinstance(exc, OSError):
        return exc.errno
    found = re.search(r"\(os error (\d+)\)", str(exc))
    return int(found.group(1)) if found else None


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn a full disk, a read-only file system or a permission error inside the block into an EmoError
    naming ``path`` (the final name, not the temporary one the bytes were going to)."""
    try:
        yield
    except (OSError, SafetensorError) as exc:
        code = _os_errno(exc)
        if code in USER_WRITE_ERRNOS:
            raise write_error(OSError(code, os.strerror(code)), path) from None
        raise


def _temp_sibling(path: Path) -> Path:
    # Same directory (so os.replace is a rename, not a copy) and the same suffix (so writers that pick
    # a format from the suffix, e.g. np.save or an mp4 muxer, behave as for the final name).
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")


def _prepare_output(path: str | os.PathLike, overwrite: bool) -> Path:
    path = Path(path)
    if path.exists() and not overwrite:
        raise EmoError(f"{path} exists; pass --overwrite to replace it")
    if path.is_dir():
        raise EmoError(f"{path} is a directory; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EmoError(f"cannot create the directory for {path}: {exc.strerror or exc}") from None
    if not os.access(path.parent, os.W_OK):
        raise EmoError(f"cannot write {path}: directory {path.parent} is not writable")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed to ``path``, on error removed.

    The parent directory is created if missing. ``overwrite=False`` raises EmoError up front if ``path``
    exists. Readers never see a partial file: ``path`` is either the old file or the complete new one.
    """
    path = _prepare_output(path, overwrite)
    temp = _temp_sibling(path)
    try:
        with writing(path):
            yield temp
            if not temp.exists():
                raise RuntimeError(f"nothing was written to the temporary file for {path}")
            os.replace(temp, path)
    except BaseException:  # also SIGTERM (emo.termination) and Ctrl-C: no partial file is left
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`); returns the path."""
    with atomic_path(path, overwrite=overwrite) as temp:
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


# --------------------------------------------------------------------------------------------------
# Input checks shared by the readers.
# --------------------------------------------------------------------------------------------------


def _check_input(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise EmoError(f"{what} file not found: {path}")
    if not path.is_file():
        raise EmoError(f"{what} path is not a file: {path}")
    if path.stat().st_size == 0:
        raise EmoError(f"{what} file is empty (0 bytes): {path}")
    return path


def _open_container(path: Path, what: str):
    import av

    try:
        return av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise EmoError(
            f"cannot read {what} {path}: not a readable media file ({_reason(exc)}); "
            f"supported: {AUDIO_FORMATS if what == 'audio' else 'mp4, mov, mkv, webm'}"
        ) from None


def _reason(exc: BaseException) -> str:
    strerror = getattr(exc, "strerror", None)
    if strerror:  # FFmpeg/OS errors: the bare reason, without the errno and the path repeated
        return str(strerror).strip()
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB, whatever its mode (see :func:`image_to_rgb`).

    EXIF orientation is applied (a phone photo comes out upright). Raises EmoError naming the file if it
    is missing, empty, corrupt or not an image.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = _check_input(path, "image")
    try:
        with Image.open(path) as image:
            image.load()
            rgb = image_to_rgb(ImageOps.exif_transpose(image))
    except UnidentifiedImageError:
        raise EmoError(
            f"cannot read image {path}: not a supported image format (use png, jpg, webp, bmp)"
        ) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise EmoError(f"cannot read image {path}: corrupt or truncated ({_reason(exc)})") from None
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise EmoError(f"cannot read image {path}: it has no pixels")
    return rgb


def image_to_rgb(image) -> np.ndarray:
    """A Pillow image of any mode (1, L, LA, P, PA, RGB, RGBA, CMYK, YCbCr, I;16, I, F...) -> (H, W, 3) uint8.

    - Transparency is composited onto a WHITE background (a cut-out portrait on white looks like a studio
      photo; black would read as hair).
    - 16-bit (I;16), 32-bit (I) and float (F) grayscale are scaled to 0-255 (:func:`_wide_gray_to_l`);
      Pillow's own convert clips them at 255, and a 16-bit portrait came out almost white.
    - 1-bit is a halftone (its grays are in the density of the dots): a radius-1 blur gives them back;
      the raw dots hide the face from the detector.
    """
    from PIL import Image, ImageFilter

    if image.mode == "1":
        image = image.convert("L").filter(ImageFilter.GaussianBlur(1))
    elif image.mode.startswith("I") or image.mode == "F":
        image = _wide_gray_to_l(image)
    if image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def _wide_gray_to_l(image):
    """A grayscale image with more than 8 bits (I;16*, I, F) -> 8-bit L, its range scaled, not clipped.

    I;16 is 16-bit by definition (0-65535). I and F say nothing about their range, so it is read off the
    values: a maximum of at most 1.0 (float only) is 0-1, at most 255 is 8-bit, at most 65535 is 16-bit,
    beyond that the maximum is white.
    """
    from PIL import Image

    values = np.asarray(image).astype(np.float64)  # (H, W)
    if image.mode.startswith("I;16"):
        top = 65535.0
    else:
        peak = float(values.max(initial=0.0))
        ranges = (1.0, 255.0, 65535.0) if image.mode == "F" else (255.0, 65535.0)
        top = next((t for t in ranges if peak <= t), peak)
    return Image.fromarray(np.clip(np.round(values * (255.0 / top)), 0, 255).astype(np.uint8), mode="L")


def save_image(path: str | os.PathLike, image: np.ndarray, overwrite: bool = True) -> Path:
    """Write an (H, W, 3) uint8 RGB image atomically; the format follows the suffix (png, jpg...)."""
    from PIL import Image

    with atomic_path(path, overwrite=overwrite) as temp:
        Image.fromarray(np.ascontiguousarray(image)).save(
            temp, format=Image.registered_extensions().get(Path(path).suffix.lower(), "PNG")
        )
    return Path(path)


# --------------------------------------------------------------------------------------------------
# Audio
# --------------------------------------------------------------------------------------------------


def load_audio(path: str | os.PathLike, sample_rate: int = 16000) -> np.ndarray:
    """Decode the first audio stream of ``path`` to float32 mono at ``sample_rate``, values in [-1, 1].

    Works for wav, mp3, m4a, flac, ogg and the audio track of mp4/mov (anything FFmpeg decodes).
    Channels are downmixed by averaging. Silence is valid. Raises EmoError naming the file for a missing,
    empty (0 bytes), corrupt or unsupported file, a file with no audio stream, or zero-length audio.
    """
    import av

    path = _check_input(path, "audio")
    with _open_container(path, "audio") as container:
        if not container.streams.audio:
            raise EmoError(f"no audio stream in {path}; give a file with sound ({AUDIO_FORMATS})")
        stream = container.streams.audio[0]
        # Keep the channels (planar float) and resample the rate only; we average the channels ourselves
        # because FFmpeg's default downmix matrix differs by layout.
        resampler = av.AudioResampler(format="fltp", layout=None, rate=sample_rate)
        chunks: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().mean(axis=0))  # (C, N) -> (N,)
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().mean(axis=0))
        except (av.FFmpegError, ValueError) as exc:
            raise EmoError(f"cannot decode audio {path}: corrupt data ({_reason(exc)})") from None
    if not chunks or sum(len(c) for c in chunks) == 0:
        raise EmoError(f"audio {path} has zero length; give a file with at least a few samples")
    audio = np.concatenate(chunks).astype(np.float32, copy=False)
    if not np.all(np.isfinite(audio)):
        raise EmoError(f"cannot decode audio {path}: it contains NaN/inf samples")
    return np.clip(audio, -1.0, 1.0)


# --------------------------------------------------------------------------------------------------
# Video in
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` learns from the container header (no decoding)."""

    fps: float  # average frame rate of the video stream
    num_frames: int  # frame count from the header, else round(duration * fps): an estimate
    width: int  # pixels, as displayed (rotation metadata applied, as iter_video_frames yields them)
    height: int  # pixels
    duration_s: float  # seconds, video stream duration if known, else the container's
    has_audio: bool  # whether there is at least one audio stream
    # Stream start times on the container clock: iter_video_frames counts time from the first video
    # frame, load_audio from the first audio sample; a player plays the audio audio_start_s - start_s late.
    start_s: float = 0.0  # timestamp of the video stream's first frame (0 if the header has none)
    audio_start_s: float = 0.0  # timestamp of the first audio stream's first sample (0 if none)


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Read a video's frame rate, size, duration and frame count from its header."""
    path = _check_input(path, "video")
    with _open_container(path, "video") as container:
        if not container.streams.video:
            raise EmoError(f"no video stream in {path}; give a video file (mp4, mov, mkv, webm)")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate:
            raise EmoError(f"cannot read video {path}: its frame rate is unknown")
        fps = float(rate)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        else:
            duration = 0.0
        num_frames = int(stream.frames) if stream.frames else int(round(duration * fps))
        if duration <= 0 and num_frames:
            duration = num_frames / fps
        audio = container.streams.audio[0] if container.streams.audio else None
        width, height = int(stream.codec_context.width), int(stream.codec_context.height)
        if _quarter_turns(_first_frame(container, stream)) % 2:
            width, height = height, width  # a phone video shot upright, stored sideways
        return VideoInfo(
            fps=fps,
            num_frames=num_frames,
            width=width,
            height=height,
            duration_s=duration,
            has_audio=audio is not None,
            start_s=_start_s(stream),
            audio_start_s=_start_s(audio) if audio is not None else 0.0,
        )


def _first_frame(container, stream):
    """The first decoded frame (its side data holds the display rotation), or None."""
    import av

    try:
        return next(container.decode(stream), None)
    except (av.FFmpegError, ValueError):
        return None


def _quarter_turns(frame) -> int:
    """Counter-clockwise quarter turns that show ``frame`` upright (its display matrix, as phones write it).

    ``frame.rotation`` is the display matrix's angle in degrees counter-clockwise (-90: a phone's "rotate 90",
    turn clockwise); players apply it, and so do we, so a portrait phone video comes out upright.
    """
    rotation = getattr(frame, "rotation", 0) if frame is not None else 0
    return round((rotation or 0) / 90) % 4


def _start_s(stream) -> float:
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base)


def _decoded_frames(path: Path) -> Iterator[tuple[float | None, np.ndarray]]:
    import av

    with _open_container(path, "video") as container:
        if not container.streams.video:
            raise EmoError(f"no video stream in {path}; give a video file (mp4, mov, mkv, webm)")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                turns = _quarter_turns(frame)
                rgb = frame.to_ndarray(format="rgb24")
                yield frame.time, np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb
        except av.FFmpegError as exc:
            raise EmoError(f"cannot decode video {path}: corrupt data ({_reason(exc)})") from None


def iter_video_frames(path: str | os.PathLike, fps: float | None = None) -> Iterator[np.ndarray]:
    """Stream a video's frames as (H, W, 3) uint8 RGB, optionally resampled to ``fps``.

    Resampling picks, for each output time k/fps (k = 0, 1, ...), the source frame whose timestamp is
    nearest, the earlier one on a tie (frames are duplicated or dropped; no blending). Output frames cover the source's span
    [first timestamp, last timestamp + one source frame), so an 8 s 25 fps clip gives 240 frames at
    30 fps. Memory stays flat: at most two decoded frames are held.
    """
    path = _check_input(path, "video")
    if fps is None:
        for _, frame in _decoded_frames(path):
            yield frame
        return
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    src_fps = probe_video(path).fps
    step = 1.0 / fps
    k = 0  # next output index
    start: float | None = None
    prev: tuple[float, np.ndarray] | None = None
    for index, (time, frame) in enumerate(_decoded_frames(path)):
        t = index / src_fps if time is None else time
        if start is None:
            start = t
        t -= start
        # Emit every output time that lies closer to prev than to this frame.
        while prev is not None and k * step <= t:
            target = k * step
            # Ties (an output time exactly between two frames) go to the earlier frame.
            yield prev[1] if target - prev[0] <= t - target + 1e-9 else frame
            k += 1
        prev = (t, frame)
    if prev is None:
        raise EmoError(f"video {path} has no frames")
    end = prev[0] + 1.0 / src_fps
    while k * step < end - 1e-9:
        yield prev[1]
        k += 1


# --------------------------------------------------------------------------------------------------
# Video out
# --------------------------------------------------------------------------------------------------


class VideoWriter:
    """Stream RGB frames into an H.264 (yuv420p) mp4, with optional AAC audio, written atomically.

    Use as a context manager::

        with VideoWriter("out.mp4", fps=30, width=512, height=512, audio=wave16k) as writer:
            for frame in frames:  # (H, W, 3) uint8 RGB
                writer.write(frame)

    - Frames are encoded as they arrive into a temporary file in the destination directory (memory
      stays flat); a clean exit renames it to ``path``; an exception removes it and leaves any existing
      ``path`` untouched.
    - ``path`` existing and ``overwrite=False`` raises EmoError before any work; so does an unwritable
      directory.
    - ``audio`` (float32 mono, ``audio_rate`` Hz) is encoded alongside the frames as AAC. It is muxed as
      given (not trimmed or padded to the video length).
    - Odd sizes: yuv420p needs even width and height, so an odd dimension is padded by one pixel,
      repeating the last row/column; ``self.width``/``self.height`` are the encoded (even) sizes.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps: float,
        width: int,
        height: int,
        audio: np.ndarray | None = None,
        audio_rate: int = 16000,
        overwrite: bool = False,
        crf: int = 18,
        preset: str = "medium",  # x264 speed/size trade-off; "veryfast" for previews
    ):
        if fps <= 0 or width <= 0 or height <= 0:
            raise ValueError(f"fps, width and height must be positive, got {fps}, {width}, {height}")
        self.path = _prepare_output(path, overwrite)
        self.fps = fps
        self.frame_width, self.frame_height = int(width), int(height)
        self.width, self.height = (
            self.frame_width + self.frame_width % 2,
            self.frame_height + self.frame_height % 2,
        )
        if (self.width, self.height) != (self.frame_width, self.frame_height):
            logger.info(
                "%s: padding %dx%d frames to %dx%d (H.264 yuv420p needs even sizes)",
                self.path,
                width,
                height,
                self.width,
                self.height,
            )
        self.audio = None if audio is None else np.asarray(audio, dtype=np.float32).reshape(-1)
        self.audio_rate = int(audio_rate)
        self.crf = crf
        self.preset = preset
        self.num_frames = 0
        self._audio_pos = 0  # samples of audio already sent to the encoder
        self._container = None
        self._temp: Path | None = None

    def __enter__(self) -> VideoWriter:
        import av

        self._temp = _temp_sibling(self.path)
        fmt = "mov" if self.path.suffix.lower() == ".mov" else "mp4"
        try:
            with writing(self.path):
                self._container = av.open(str(self._temp), mode="w", format=fmt)
        except (av.FFmpegError, OSError) as exc:
            raise EmoError(f"cannot write {self.path}: {_reason(exc)}") from None
        rate = Fraction(self.fps).limit_denominator(1001)
        self._rate = rate
        self._video = self._container.add_stream(
            "libx264",
            rate=rate,
            # No B-frames: with them, identical frames encoded inside a generation run came out different in
            # about 1 run in 8 (x264's B-frame path, also with threads=1; measured: 0 in 40 without them), and
            # the same seed must give the same file. The cost is a slightly larger file at the same quality.
            options={"crf": str(self.crf), "preset": self.preset, "x264-params": "bframes=0"},
        )
        self._video.width, self._video.height = self.width, self.height
        self._video.pix_fmt = "yuv420p"
        self._video.codec_context.time_base = 1 / rate
        self._audio_stream = None
        if self.audio is not None and len(self.audio):
            self._audio_stream = self._container.add_stream("aac", rate=self.audio_rate, layout="mono")
        return self

    def write(self, frame: np.ndarray) -> None:
        """Encode one (height, width, 3) uint8 RGB frame."""
        import av

        if self._container is None:
            raise RuntimeError("VideoWriter.write outside its `with` block")
        frame = np.asarray(frame)
        if frame.shape != (self.frame_height, self.frame_width, 3) or frame.dtype != np.uint8:
            raise ValueError(
                f"frame must be ({self.frame_height}, {self.frame_width}, 3) uint8, got {frame.shape} {frame.dtype}"
            )
        if (self.width, self.height) != (self.frame_width, self.frame_height):
            frame = np.pad(
                frame,
                ((0, self.height - self.frame_height), (0, self.width - self.frame_width), (0, 0)),
                mode="edge",
            )
        # Convert to yuv420p here: left to the encoder, PyAV's implicit conversion made identical frames
        # encode to different pixels from run to run; this explicit one is deterministic (same seed, same video).
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24").reformat(
            format="yuv420p"
        )
        video_frame.pts = self.num_frames
        video_frame.time_base = 1 / self._rate
        with writing(self.path):
            self._container.mux(self._video.encode(video_frame))
            self.num_frames += 1
            # Interleave: send the audio that plays up to the end of this frame.
            self._write_audio(int(round(self.num_frames / self.fps * self.audio_rate)))

    def _write_audio(self, until: int) -> None:
        import av

        if self._audio_stream is None:
            return
        until = min(until, len(self.audio))
        if until <= self._audio_pos:
            return
        chunk = np.clip(self.audio[self._audio_pos : until], -1.0, 1.0)[None, :]  # (1, N)
        audio_frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout="mono")
        audio_frame.sample_rate = self.audio_rate
        audio_frame.pts = self._audio_pos
        audio_frame.time_base = Fraction(1, self.audio_rate)
        self._container.mux(self._audio_stream.encode(audio_frame))
        self._audio_pos = until

    def __exit__(self, exc_type, exc, tb) -> None:
        container = self._container
        try:
            with writing(self.path):
                self._finish(container, exc_type)
        except BaseException:  # also SIGTERM (emo.termination) and Ctrl-C: no partial file is left
            self._container = None
            with contextlib.suppress(Exception):
                container.close()
            with contextlib.suppress(OSError):
                self._temp.unlink()
            raise
        if exc_type is not None:
            with contextlib.suppress(OSError):
                self._temp.unlink()

    def _finish(self, container, exc_type) -> None:
        """Flush the encoders and rename the file into place (after an error in the block: just close it)."""
        if exc_type is None:
            self._write_audio(len(self.audio) if self.audio is not None else 0)
            container.mux(self._video.encode(None))
            if self._audio_stream is not None:
                container.mux(self._audio_stream.encode(None))
        self._container = None
        container.close()
        if exc_type is None:
            if self.num_frames == 0:
                raise EmoError(f"no frames were written to {self.path}")
            os.replace(self._temp, self.path)


def write_video(
    path: str | os.PathLike,
    frames,
    fps: float,
    audio: np.ndarray | None = None,
    audio_rate: int = 16000,
    overwrite: bool = False,
    crf: int = 18,
) -> int:
    """Write an iterable of (H, W, 3) uint8 frames (size taken from the first) with :class:`VideoWriter`.

    Returns the number of frames written.
    """
    iterator = iter(frames)
    try:
        first = np.asarray(next(iterator))
    except StopIteration:
        raise EmoError(f"no frames to write to {path}") from None
    height, width = first.shape[:2]
    with VideoWriter(
        path, fps, width, height, audio=audio, audio_rate=audio_rate, overwrite=overwrite, crf=crf
    ) as writer:
        writer.write(first)
        for frame in iterator:
            writer.write(frame)
    return writer.num_frames


def num_frames_for(duration_s: float, fps: float) -> int:
    """Video frames that cover ``duration_s`` seconds at ``fps``: ceil(duration * fps), robust to rounding."""
    return max(0, math.ceil(duration_s * fps - 1e-6))
