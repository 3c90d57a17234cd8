"""Video in and out (PyAV): frames streamed, never a whole video in memory; H.264 + AAC out."""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from emo.errors import EmoError
from emo.media.files import (
    check_input,
    check_output,
    decode_reason,
    open_container,
    prepare_output,
    temp_sibling,
    writing,
)

logger = logging.getLogger(__name__)

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
    path = check_input(path, "video")
    with open_container(path, "video") as container:
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

    with open_container(path, "video") as container:
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
            raise EmoError(f"cannot decode video {path}: corrupt data ({decode_reason(exc)})") from None


def iter_video_frames(path: str | os.PathLike, fps: float | None = None) -> Iterator[np.ndarray]:
    """Stream a video's frames as (H, W, 3) uint8 RGB, optionally resampled to ``fps``.

    Resampling picks, for each output time k/fps (k = 0, 1, ...), the source frame whose timestamp is
    nearest, the earlier one on a tie (frames are duplicated or dropped; no blending). Output frames cover the source's span
    [first timestamp, last timestamp + one source frame), so an 8 s 25 fps clip gives 240 frames at
    30 fps. Memory stays flat: at most two decoded frames are held.
    """
    path = check_input(path, "video")
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


# The containers VideoWriter makes; the file's suffix picks one.
WRITTEN_VIDEO_SUFFIXES = (".mp4", ".mov")


def _check_video_name(path: str | os.PathLike) -> Path:
    """A video's name must end in a container the writer makes, so that `--out clip.txt` fails, not writes an
    mp4 by another name."""
    path = Path(path)
    if path.suffix.lower() not in WRITTEN_VIDEO_SUFFIXES:
        raise EmoError(f"{path}: the video is written as mp4 or mov; name it e.g. {path.with_suffix('.mp4')}")
    return path


def check_video_output(path: str | os.PathLike, overwrite: bool) -> Path:
    """:func:`check_output` for a video (its name too): for callers that check before the long work."""
    return check_output(_check_video_name(path), overwrite)


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
        self.path = prepare_output(_check_video_name(path), overwrite)
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

        self._temp = temp_sibling(self.path)
        fmt = "mov" if self.path.suffix.lower() == ".mov" else "mp4"
        try:
            with writing(self.path):
                self._container = av.open(str(self._temp), mode="w", format=fmt)
        except (av.FFmpegError, OSError) as exc:
            raise EmoError(f"cannot write {self.path}: {decode_reason(exc)}") from None
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
