"""Raw talking-head videos -> a training dataset (EMO paper Sec. 4.1; EMO.md §4).

One source video is one unit of work, done by :func:`process_video` in two streaming passes:

1. **Analysis** at the source frame rate: every frame feeds the scene-cut detector (emo.data.scenes);
   every ``1/analysis_fps`` seconds a frame also gets face detection and the camera-motion tracker
   (emo.data.motion). Scenes are cut into clips of ``min_clip_s``..``max_clip_s``; each clip is kept or
   dropped with a recorded reason: ``too_short``, ``no_face``, ``multiple_faces``, ``face_too_small``,
   ``camera_motion``, ``face_lost`` (face mesh did not find the face in enough cropped frames).
2. **Extraction** resampled to ``fps`` (30): each kept clip gets ONE fixed square crop (the expanded
   union of its face boxes, so the head can move inside a still frame, as at generation time), resized
   to ``size``² and stored as JPEG (emo.data.clips explains the format); face mesh on the crop gives
   per-frame boxes, landmarks, head pose and rotation speed; the union of the boxes is the clip's
   face-region mask; the audio track becomes 16 kHz mono wav; wav2vec2 features are added when an
   encoder is given.

Everything a video produces is written under ``DIR/tmp/`` and renamed to ``DIR/videos/<video_id>/``
when complete, with its ``video.json`` record inside. A rerun skips videos that have a record, so a run
killed at any point (even ``kill -9``) resumes where it stopped and ends with the same dataset as an
uninterrupted run. A video that cannot be read gets a ``failed`` record with the reason and the run goes
on; so does one whose worker process dies (a native crash in FFmpeg or MediaPipe, the out-of-memory
killer): videos are always processed in worker processes, even with ``--workers 1``. The manifest and
summary are rebuilt from the records at the end (emo.data.manifest). ``DIR/dataset.json`` holds the
settings and the audio encoder's fingerprint; a rerun with others is refused.

``--workers N`` runs N processes; ``--shard i/N`` takes every N-th video of the sorted input list, so a
cluster array job can split the work; the last shard to finish (or ``--merge``) writes the manifest of
all of them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from emo.data import clips as clipfmt
from emo.data import manifest as mf
from emo.data.motion import CameraMotion
from emo.data.scenes import SceneConfig, SceneCutDetector, Span, scenes_from_cuts, split_scene
from emo.errors import EmoError

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".flv"}
LIST_SUFFIXES = {".txt", ".lst", ".list"}


@dataclass(frozen=True)
class PreprocessConfig:
    """Settings that shape the dataset (stored in DIR/dataset.json; a rerun must use the same)."""

    fps: float = 30.0  # output frame rate (paper: 30)
    size: int = 512  # output frames are size x size (paper: 512)
    min_clip_s: float = 3.0  # shorter scenes are dropped (too_short)
    max_clip_s: float = 12.0  # longer scenes are cut into equal clips no longer than this
    scene: SceneConfig = field(default_factory=SceneConfig)  # scene-cut detector settings
    analysis_fps: float = 5.0  # face detection / camera-motion samples per second in the analysis pass
    analysis_width: int = 640  # analysis frames are downscaled to this width (detection, motion)
    min_face_px: float = 96.0  # median face-box height in source pixels below which: face_too_small
    min_face_presence: float = 0.8  # fraction of analysis samples that must show a face, else no_face
    multi_face_ratio: float = 0.4  # a second face counts if its box is at least this fraction of the largest's height
    max_multi_face_frac: float = 0.2  # more samples than this with 2+ counted faces: multiple_faces
    max_camera_motion: float = 0.08  # median background speed (frame widths / s) above which: camera_motion
    crop_expand: float = 1.8  # the union of the clip's face boxes is widened by this factor for the crop
    min_landmark_frac: float = 0.8  # fraction of output frames where face mesh must find the face, else face_lost
    jpeg_quality: int = 95  # quality of the stored frames

    def __post_init__(self):
        checks = [
            (self.fps > 0, f"--fps must be > 0, got {self.fps}"),
            (self.size >= 16, f"--size must be >= 16, got {self.size}"),
            (0 < self.min_clip_s <= self.max_clip_s, f"need 0 < --min-clip <= --max-clip, got {self.min_clip_s}, {self.max_clip_s}"),
            (self.analysis_fps > 0, f"--analysis-fps must be > 0, got {self.analysis_fps}"),
            (self.crop_expand >= 1, f"--crop-expand must be >= 1, got {self.crop_expand}"),
            (1 <= self.jpeg_quality <= 100, f"--jpeg-quality must be in 1..100, got {self.jpeg_quality}"),
        ]
        for ok, message in checks:
            if not ok:
                raise EmoError(message)

    def to_json(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# Inputs, ids, shards
# --------------------------------------------------------------------------------------------------


def list_videos(inputs: list[str | os.PathLike]) -> list[Path]:
    """Expand folders (recursively) and list files (one path per line) into sorted, unique video paths."""
    found: dict[str, Path] = {}

    def add(path: Path, origin: str) -> None:
        if not path.is_file():
            raise EmoError(f"video not found: {path} (from {origin})")
        found.setdefault(str(path.resolve()), path.resolve())

    for item in inputs:
        path = Path(item)
        if path.is_dir():
            videos = [p for p in sorted(path.rglob("*")) if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()]
            if not videos:
                raise EmoError(f"no videos ({', '.join(sorted(VIDEO_SUFFIXES))}) under {path}")
            for video in videos:
                add(video, str(path))
        elif path.suffix.lower() in LIST_SUFFIXES and path.is_file():
            for line in path.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    entry = Path(line)
                    add(entry if entry.is_absolute() else path.parent / entry, str(path))
        elif path.exists():
            add(path, "the command line")
        else:
            raise EmoError(f"input not found: {path}; give video files, folders of videos or a .txt list of paths")
    return sorted(found.values())


def video_id(path: Path) -> str:
    """Stable id of a source video: its name plus a hash of its absolute path (names may repeat)."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", path.stem)[:48] or "video"
    return f"{stem}-{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]}"


def parse_shard(text: str | None) -> tuple[int, int]:
    """'i/N' -> (i, N), 0 <= i < N; None -> (0, 1)."""
    if text is None:
        return 0, 1
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not int(match[1]) < int(match[2]):
        raise EmoError(f"--shard must be i/N with 0 <= i < N (e.g. 0/8), got {text!r}")
    return int(match[1]), int(match[2])


# --------------------------------------------------------------------------------------------------
# One video
# --------------------------------------------------------------------------------------------------


@dataclass
class _Sample:
    """What the analysis pass learned at one sampled frame."""

    time_s: float
    faces: list  # face boxes in source pixels, largest first
    camera_speed: float | None  # background speed since the previous sample (widths / s)


def _analyse(source: Path, info, config: PreprocessConfig, analyzer) -> tuple[list[int], int, list[_Sample]]:
    """Pass 1: scene cuts (every frame) and face/camera samples (every 1/analysis_fps s)."""
    import cv2

    from emo.media import iter_video_frames

    def shrink(frame: np.ndarray, width: int) -> tuple[np.ndarray, float]:
        # Bilinear, not area: 5-10x faster on 1080p and plenty for detection and frame differences.
        height, full = frame.shape[:2]
        if full <= width:
            return frame, 1.0
        size = (width, max(1, round(height * width / full)))
        return cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR), width / full

    detector = SceneCutDetector(info.fps, config.scene)
    motion = CameraMotion()
    step = max(1, int(round(info.fps / config.analysis_fps)))
    samples: list[_Sample] = []
    count = 0
    # Read at the source's own rate through the same timestamp-based resampler as pass 2: for a
    # constant-rate video this is every frame once; for a variable-rate one, frame index / fps is then
    # the same clock in both passes.
    for index, frame in enumerate(iter_video_frames(source, fps=info.fps)):
        count += 1
        tiny, tiny_scale = shrink(frame, config.scene.analysis_width)
        detector.push(tiny)
        if index % step:
            continue
        time_s = index / info.fps
        small, scale = shrink(frame, config.analysis_width)
        boxes = [tuple(v / scale for v in _box_tuple(b)) for b in analyzer.detect(small)]  # source pixels
        speed = motion.push(
            cv2.cvtColor(tiny, cv2.COLOR_RGB2GRAY), time_s, [tuple(v * tiny_scale for v in b) for b in boxes]
        )
        samples.append(_Sample(time_s, boxes, speed))
    return detector.finish(), count, samples


def _box_tuple(box) -> tuple[float, float, float, float]:
    return (float(box.x0), float(box.y0), float(box.x1), float(box.y1))


def _judge(span: Span, samples: list[_Sample], config: PreprocessConfig) -> tuple[str | None, dict]:
    """Keep (None) or the drop reason for one clip span, with the statistics behind the decision."""
    inside = [s for s in samples if span.start_s <= s.time_s < span.end_s]
    with_face = [s for s in inside if s.faces]
    stats: dict = {"samples": len(inside)}
    presence = len(with_face) / max(1, len(inside))
    stats["face_presence"] = round(presence, 4)
    if not with_face or presence < config.min_face_presence:
        return "no_face", stats
    heights = [s.faces[0][3] - s.faces[0][1] for s in with_face]
    multi = sum(
        1 for s in with_face if len(s.faces) > 1 and (s.faces[1][3] - s.faces[1][1]) >= config.multi_face_ratio * (s.faces[0][3] - s.faces[0][1])
    )
    stats["multi_face_frac"] = round(multi / len(with_face), 4)
    stats["face_px"] = round(float(np.median(heights)), 2)
    # Camera motion counts only if measured on at least half of the steps (close-ups often show too
    # little background to measure; they are kept).
    speeds = [s.camera_speed for s in inside[1:] if s.camera_speed is not None]
    measured = len(speeds) >= max(2, 0.5 * (len(inside) - 1))
    stats["camera_motion"] = round(float(np.median(speeds)), 5) if measured else None
    if stats["multi_face_frac"] > config.max_multi_face_frac:
        return "multiple_faces", stats
    if stats["face_px"] < config.min_face_px:
        return "face_too_small", stats
    if measured and stats["camera_motion"] > config.max_camera_motion:
        return "camera_motion", stats
    return None, stats


def _frame_range(span: Span, fps: float, src_fps: float) -> tuple[int, int]:
    """Output frames [k0, k1) at ``fps`` whose nearest source frame lies inside ``span``.

    Output frame k shows the source frame nearest to k / fps (emo.media.iter_video_frames), so a frame
    within half a source frame of a cut could show the other scene: those are left out.
    """
    half = 0.5 / src_fps
    k0 = int(np.ceil((span.start_s - half) * fps + 1e-6)) if span.start_s > 0 else 0
    k1 = int(np.floor((span.end_s - half) * fps - 1e-6)) + 1
    return k0, max(k0, k1)


@dataclass
class _ClipWork:
    """A kept clip being extracted in pass 2."""

    clip_id: str
    span: Span
    k0: int
    k1: int
    crop: object  # face.Box in source pixels
    stats: dict
    directory: Path
    writer: clipfmt.FrameStreamWriter | None = None
    observations: list = field(default_factory=list)
    tracker: object = None


def _extract(source: Path, works: list[_ClipWork], config: PreprocessConfig, make_tracker) -> None:
    """Pass 2: crop, resize, store and face-mesh every output frame of the kept clips."""
    from emo.conditioning.face import crop_and_resize
    from emo.media import iter_video_frames

    if not works:
        return
    pending = sorted(works, key=lambda w: w.k0)
    current: _ClipWork | None = None
    last = max(w.k1 for w in works)
    for k, frame in enumerate(iter_video_frames(source, fps=config.fps)):
        if k >= last:
            break  # nothing kept after this: stop decoding
        if current is not None and k >= current.k1:
            current = None
        if current is None and pending and pending[0].k0 <= k:
            current = pending.pop(0)
            current.directory.mkdir(parents=True)
            current.writer = clipfmt.FrameStreamWriter(current.directory, config.jpeg_quality)
            current.tracker = make_tracker()
        if current is None or not current.k0 <= k < current.k1:
            continue
        image = crop_and_resize(frame, current.crop, config.size)  # (S, S, 3)
        current.writer.write(image)
        current.observations.append(current.tracker.analyze(image))


def _finish_clip(
    work: _ClipWork, config: PreprocessConfig, audio: np.ndarray | None, audio_lead: int, encoder
) -> tuple[str | None, dict]:
    """Write meta.npz (+ audio) of an extracted clip; returns (drop reason or None, its record).

    ``audio_lead``: the index of the audio sample that plays with the first video frame (see
    process_video).
    """
    from emo.conditioning.face import Box, region_mask, rotation_speed

    offsets = work.writer.close()
    work.tracker.close()
    num = work.writer.num_frames
    found = np.array([o is not None for o in work.observations], dtype=bool)
    work.stats["landmark_frac"] = round(float(found.mean()) if num else 0.0, 4)
    if num == 0 or found.mean() < config.min_landmark_frac:
        return "face_lost", {}
    # Frames where face mesh missed the face get the values of the nearest frames that have it
    # (linear interpolation), so every array is complete and smooth.
    idx = np.flatnonzero(found)
    boxes = np.array([_box_tuple(o.box) for o in work.observations if o is not None], dtype=np.float32)
    landmarks = np.stack([np.asarray(o.landmarks, dtype=np.float32) for o in work.observations if o is not None])
    angles = np.array([[o.pose.yaw, o.pose.pitch, o.pose.roll] for o in work.observations if o is not None], dtype=np.float32)
    everything = np.arange(num)

    def fill(values: np.ndarray) -> np.ndarray:
        flat = values.reshape(len(idx), -1)
        out = np.stack([np.interp(everything, idx, flat[:, j]) for j in range(flat.shape[1])], axis=1)
        return out.reshape(num, *values.shape[1:]).astype(values.dtype)

    boxes, landmarks, angles = fill(boxes), fill(landmarks), fill(angles)
    # Missing frames are NaN rotations: rotation_speed holds the nearest valid one.
    rotations = np.stack([np.full((3, 3), np.nan) if o is None else np.asarray(o.pose.rotation) for o in work.observations])
    speed = np.asarray(rotation_speed(rotations, config.fps, config.fps), dtype=np.float32).reshape(num)
    # The paper's face region: the union of the clip's face boxes (what may move is where the face went).
    union = Box(float(boxes[:, 0].min()), float(boxes[:, 1].min()), float(boxes[:, 2].max()), float(boxes[:, 3].max()))
    mask = region_mask(union, None, config.size)  # (S, S) float32 {0, 1}
    np.savez(
        work.directory / clipfmt.META,
        frame_offsets=offsets,
        boxes=boxes,
        landmarks=landmarks,
        pose=angles,
        speed=speed,
        face_found=found,
        mask=(mask > 0).astype(np.uint8),
        crop_box=np.asarray(_box_tuple(work.crop), dtype=np.float32),
    )
    has_audio = audio is not None
    if has_audio:
        a0 = int(round(work.k0 / config.fps * clipfmt.AUDIO_RATE))
        a1 = int(round(work.k1 / config.fps * clipfmt.AUDIO_RATE))
        wave = _audio_span(audio, a0 + audio_lead, a1 - a0)
        clipfmt.write_audio(work.directory / clipfmt.AUDIO, wave)
        if encoder is not None:
            write_audio_features(work.directory, wave, config.fps, num, encoder)
    work.stats["mean_speed"] = round(float(speed.mean()), 4)
    work.stats["face_in_crop"] = round(float(np.median(boxes[:, 3] - boxes[:, 1])) / config.size, 4)
    return None, {
        "clip_id": work.clip_id,
        "start_s": round(work.k0 / config.fps, 6),
        "end_s": round(work.k1 / config.fps, 6),
        "fps": config.fps,
        "num_frames": num,
        "size": config.size,
        "has_audio": has_audio,
        "stats": work.stats,
    }


def _audio_span(audio: np.ndarray, start: int, length: int) -> np.ndarray:
    """``length`` samples of ``audio`` from index ``start`` (may be negative); silence where the track
    has none (before it starts, after it ends), as a player would play it."""
    wave = np.zeros(length, dtype=np.float32)
    lo, hi = max(start, 0), min(start + length, len(audio))
    if hi > lo:
        wave[lo - start : hi - start] = audio[lo:hi]
    return wave


def write_audio_features(clip_dir: Path, wave: np.ndarray, fps: float, num_frames: int, encoder) -> None:
    """wav2vec2 features of a clip's audio, (F, L, D) float16, written atomically."""
    import torch
    from safetensors.torch import save_file

    from emo.media import atomic_path

    features = encoder.frame_features(wave, fps, num_frames=num_frames).to(torch.float16).contiguous()
    with atomic_path(clip_dir / clipfmt.AUDIO_FEATURES) as temp:
        save_file({"features": features}, str(temp))


class _Tracker:
    """Face Mesh tracking over one clip, fed one frame at a time.

    A fresh MediaPipe graph per clip: tracking state carried over from another clip (or another video
    that happened to run in the same worker) would make results depend on the processing order.
    """

    def __init__(self):
        from emo.conditioning.face import FaceAnalyzer

        self._analyzer = FaceAnalyzer()
        self._frame: np.ndarray | None = None
        self._results = self._analyzer.analyze_video(self._frames())

    def _frames(self):
        while True:
            yield self._frame

    def analyze(self, image: np.ndarray):
        self._frame = image
        return next(self._results)

    def close(self) -> None:
        self._results.close()
        self._analyzer.close()


class _Tools:
    """Per-process heavy objects (face detector, audio encoder), built once per worker."""

    def __init__(self, audio_encoder: str | None, device: str = "cpu"):
        from emo.conditioning.face import FaceAnalyzer

        self.analyzer = FaceAnalyzer()
        self.make_tracker = _Tracker
        self.encoder = None
        if audio_encoder:
            from emo.conditioning.audio import AudioEncoder

            self.encoder = AudioEncoder.from_pretrained(audio_encoder, device=device)


def process_video(source: Path, root: Path, config: PreprocessConfig, tools: _Tools) -> dict:
    """Preprocess one video into ``root/videos/<video_id>/`` (atomically); returns its record.

    Never raises for a bad video: the record then has ``status: failed`` and the error.
    """
    from emo.conditioning.face import Box, square_crop_box
    from emo.media import load_audio, probe_video

    vid = video_id(source)
    tmp = _tmp_dir(root, vid)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    record: dict = {"video_id": vid, "source": str(source), "status": "ok", "error": None}
    started = time.perf_counter()
    try:
        info = probe_video(source)
        record["info"] = {
            "fps": info.fps, "width": info.width, "height": info.height,
            "duration_s": info.duration_s, "has_audio": info.has_audio,
            "audio_delay_s": round(info.audio_start_s - info.start_s, 6) if info.has_audio else None,
        }
        cuts, decoded, samples = _analyse(source, info, config, tools.analyzer)
        if decoded == 0:
            raise EmoError(f"video {source} has no frames")
        if info.num_frames and decoded < 0.9 * info.num_frames - 1:
            raise EmoError(f"video {source} is truncated: decoded {decoded} of {info.num_frames} frames")
        record["info"]["duration_s"] = decoded / info.fps
        record["cuts_s"] = [round(c / info.fps, 6) for c in cuts]
        dropped, works = [], []
        for scene in scenes_from_cuts(cuts, decoded, info.fps):
            spans, short = split_scene(scene, config.min_clip_s, config.max_clip_s)
            dropped += [_drop(s, "too_short", {}) for s in short]
            for span in spans:
                reason, stats = _judge(span, samples, config)
                if reason:
                    dropped.append(_drop(span, reason, stats))
                    continue
                boxes = [Box(*s.faces[0]) for s in samples if span.start_s <= s.time_s < span.end_s and s.faces]
                crop = square_crop_box(boxes, info.width, info.height, config.crop_expand)
                k0, k1 = _frame_range(span, config.fps, info.fps)
                clip_id = f"{vid}_{len(works):03d}"
                works.append(_ClipWork(clip_id, span, k0, k1, crop, stats, tmp / clip_id))
        audio = None
        if info.has_audio and works:
            try:
                audio = load_audio(source, clipfmt.AUDIO_RATE)
            except EmoError as exc:
                logger.warning("%s: audio unreadable, clips kept without audio (%s)", source, exc)
        # Output time 0 is the first video frame (iter_video_frames) but audio sample 0 is the first audio
        # sample; the streams of a container may start at different times (an edit list, a recorder that
        # starts one late): line them up on the container clock, as a player does, or lips and speech drift.
        audio_lead = int(round((info.start_s - info.audio_start_s) * clipfmt.AUDIO_RATE))
        try:
            _extract(source, works, config, tools.make_tracker)
        except BaseException:
            for work in works:  # free the MediaPipe graphs and file handles of a broken extraction
                if work.writer is not None:
                    work.writer.abort()
                    work.tracker.close()
            raise
        kept = []
        for work in works:
            if work.writer is None:  # the video ended before this clip (short decode at 30 fps)
                dropped.append(_drop(work.span, "too_short", work.stats))
                continue
            reason, clip = _finish_clip(work, config, audio, audio_lead, tools.encoder)
            if reason:
                shutil.rmtree(work.directory)
                dropped.append(_drop(work.span, reason, work.stats))
                continue
            clip.update(video_id=vid, source=str(source), path=f"{mf.VIDEOS}/{vid}/{work.clip_id}")
            kept.append(clip)
        record["clips"] = kept
        record["dropped"] = sorted(dropped, key=lambda d: d["start_s"])
    except EmoError as exc:
        record.update(status="failed", error=str(exc), clips=[], dropped=[])
    except (KeyboardInterrupt, SystemExit):
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as exc:  # a broken file can break a decoder in many ways; keep the run going
        logger.debug("%s failed", source, exc_info=True)
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}", clips=[], dropped=[])
    if record["status"] == "failed":
        logger.warning("%s: failed: %s", source, record["error"])
        for child in tmp.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    mf.write_json(tmp / mf.VIDEO_RECORD, record)
    _commit(tmp, root / mf.VIDEOS / vid)
    record["_seconds"] = time.perf_counter() - started  # for progress/benchmarks, not stored
    return record


def _tmp_dir(root: Path, vid: str) -> Path:
    # Host and pid in the name: two processes (or shards on a shared disk) never write the same folder.
    return root / mf.TMP / f"{vid}.{socket.gethostname()}-{os.getpid()}"


def _clear_tmp(root: Path, ids: set[str]) -> None:
    """Remove the work in progress of these videos (left by a killed run or a dead worker)."""
    tmp_root = root / mf.TMP
    if ids and tmp_root.is_dir():
        for entry in tmp_root.iterdir():
            if entry.name.split(".", 1)[0] in ids:
                shutil.rmtree(entry, ignore_errors=True)


def _drop(span: Span, reason: str, stats: dict) -> dict:
    return {"start_s": round(span.start_s, 6), "end_s": round(span.end_s, 6), "reason": reason, "stats": stats}


def _commit(tmp: Path, final: Path) -> None:
    """Make a finished video folder visible in one rename (replacing an older record, e.g. a retry)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        trash = tmp.with_name(tmp.name + ".old")
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)


# --------------------------------------------------------------------------------------------------
# Runs: workers, shards, resume
# --------------------------------------------------------------------------------------------------

CRASHED = "worker crashed"  # the error of a video whose worker process died while processing it

_WORKER_TOOLS: _Tools | None = None
_WORKER_ERROR: Exception | None = None


def _worker_init(audio_encoder: str | None, device: str, single_threaded: bool, log_level: int) -> None:
    global _WORKER_TOOLS, _WORKER_ERROR
    logging.basicConfig(level=log_level, format="%(message)s")
    if single_threaded:
        _single_threaded()
    try:
        _WORKER_TOOLS = _Tools(audio_encoder, device)
    except Exception as exc:  # raised by the jobs: a failing initializer would break the pool, like a crash
        _WORKER_ERROR = exc


def _worker_ready() -> None:
    if _WORKER_ERROR is not None:
        raise _WORKER_ERROR


def _worker_run(process_fn, source: str, root: str, config: PreprocessConfig) -> dict:
    _worker_ready()
    return process_fn(Path(source), Path(root), config, _WORKER_TOOLS)


def _process_in_workers(
    videos: list[Path],
    root: Path,
    config: PreprocessConfig,
    workers: int,
    audio_encoder: str | None,
    device: str,
    process_fn,
    done,
) -> None:
    """Run ``process_fn`` on every video in worker processes; ``done(record)`` as each one finishes.

    Even a single worker is a separate process: a native crash (a segfault in FFmpeg or MediaPipe, the
    out-of-memory killer) then ends that process only. The pool is restarted and the videos that were in
    flight are run again one at a time, so the one that crashes is known; it gets a failed record like a
    corrupt file and the run goes on.
    """
    import multiprocessing
    from collections import deque

    # spawn, not fork: MediaPipe and torch hold threads that a fork would copy in a broken state.
    context = multiprocessing.get_context("spawn")
    size = min(workers, len(videos))
    # Threads per worker are set once per run, so a video retried alone gives the same bytes.
    initargs = (audio_encoder, device, size > 1, logging.getLogger().getEffectiveLevel())
    job = (process_fn, root, config)
    pending, suspects = deque(videos), deque()
    while pending or suspects:
        if suspects:
            lost = _run_pool(suspects, 1, context, initargs, job, done)
        else:
            lost = _run_pool(pending, min(size, len(pending)), context, initargs, job, done)
        _clear_tmp(root, {video_id(v) for v in lost})  # what the dead and the stopped workers left
        if len(lost) == 1:
            done(_crash_record(lost[0], root))
        else:
            suspects.extend(sorted(lost))


def _run_pool(queue, slots: int, context, initargs: tuple, job: tuple, done) -> list[Path]:
    """Process the videos of ``queue`` (a deque, consumed) in a pool of ``slots`` workers until it is
    empty or a worker dies; returns the videos whose jobs the dead pool failed."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    process_fn, root, config = job
    running: dict = {}
    lost: list[Path] = []

    def collect(future) -> bool:
        video = running.pop(future)
        try:
            record = future.result()
        except BrokenProcessPool:  # its worker, or another one, died: the pool fails every job it has
            lost.append(video)
            return False
        done(record)
        return True

    with ProcessPoolExecutor(slots, mp_context=context, initializer=_worker_init, initargs=initargs) as pool:
        _start_workers(pool, slots)
        broken = False
        while queue and not broken:
            # At most one job per worker, so the jobs a broken pool fails are the ones it was running.
            while queue and len(running) < slots:
                try:
                    running[pool.submit(_worker_run, process_fn, str(queue[0]), str(root), config)] = queue[0]
                except BrokenProcessPool:
                    broken = True
                    break
                queue.popleft()
            if running:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                broken = not all([collect(future) for future in finished]) or broken
        for future in list(running):  # the last jobs; after a break they end at once
            collect(future)
    return lost


def _start_workers(pool, workers: int) -> None:
    """Wait until the workers have loaded their tools; one that dies then is no video's fault."""
    from concurrent.futures.process import BrokenProcessPool

    try:
        for future in [pool.submit(_worker_ready) for _ in range(workers)]:
            future.result()
    except BrokenProcessPool:
        raise EmoError(
            "a preprocessing worker process died while loading MediaPipe / the audio encoder, before any "
            "video (out of memory? a broken install?)"
        ) from None


def _crash_record(source: Path, root: Path) -> dict:
    """Record as failed a video whose worker died while processing it alone (it wrote no record)."""
    vid = video_id(source)
    error = (
        f"{CRASHED}: the worker process died while processing {source} (a native crash in FFmpeg or "
        "MediaPipe, or killed, e.g. by the out-of-memory killer)"
    )
    logger.warning("%s: failed: %s", source, error)
    record = {"video_id": vid, "source": str(source), "status": "failed", "error": error}
    record.update(clips=[], dropped=[])
    tmp = _tmp_dir(root, vid)
    tmp.mkdir(parents=True)
    mf.write_json(tmp / mf.VIDEO_RECORD, record)
    _commit(tmp, root / mf.VIDEOS / vid)
    return {**record, "_seconds": 0.0}


def _single_threaded() -> None:
    # N worker processes on N cores: threads inside each would only fight over the same cores.
    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


ENCODER_KEY = "audio_encoder"  # in dataset.json: audio_encoder_id of the features' wav2vec2, or null


def audio_encoder_id(path: str | os.PathLike) -> str:
    """What identifies a wav2vec2 folder in dataset.json: a SHA-256 of its config and weights.

    Not its path: a moved or copied folder is the same encoder, other weights in the same place are not.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise EmoError(f"--audio-encoder {path}: no config.json there; give a local wav2vec2 folder")
    digest = hashlib.sha256()
    for name in ("config.json", "preprocessor_config.json"):  # the latter holds do_normalize
        if (path / name).is_file():
            try:
                settings = json.loads((path / name).read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise EmoError(f"cannot read {path / name}: not valid JSON ({exc})") from None
            settings.pop("transformers_version", None)  # re-saving with another version changes nothing
            digest.update(json.dumps(settings, sort_keys=True).encode())
    # The files transformers loads the weights from (safetensors first, as it does).
    for weights in sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin")):
        digest.update(weights.name.encode())
        with open(weights, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def _check_dataset_config(root: Path, config: PreprocessConfig, encoder: str | None, encoder_path) -> None:
    """Refuse to add to a dataset made with other settings or another audio encoder; else record them."""
    path = root / mf.DATASET_CONFIG
    wanted = config.to_json()
    if not path.is_file():
        root.mkdir(parents=True, exist_ok=True)
        mf.write_json(path, {**wanted, ENCODER_KEY: encoder})
        return
    existing = mf.read_json(path)
    settings = {k: v for k, v in existing.items() if k != ENCODER_KEY}
    if settings != wanted:
        changed = sorted(k for k in set(settings) | set(wanted) if settings.get(k) != wanted.get(k))
        raise EmoError(
            f"{root} was made with different settings ({', '.join(changed)}); use the same options "
            "or a new --out directory"
        )
    _check_encoder(root, existing, encoder, encoder_path, adding=False)


def _check_encoder(root: Path, existing: dict, encoder: str | None, encoder_path, adding: bool) -> None:
    """Every clip's audio features must come from one wav2vec2 (or the dataset has none yet)."""
    if ENCODER_KEY not in existing:  # made before the encoder was recorded: take this run's word for it
        logger.warning("%s does not record its audio encoder; recording %s", root, encoder_path or "none")
        mf.write_json(root / mf.DATASET_CONFIG, {**existing, ENCODER_KEY: encoder})
        return
    recorded = existing[ENCODER_KEY]
    if recorded == encoder:
        return
    if adding and recorded is None:  # the first features of a dataset made without them
        mf.write_json(root / mf.DATASET_CONFIG, {**existing, ENCODER_KEY: encoder})
        return
    if encoder is None:
        raise EmoError(
            f"{root} was made with --audio-encoder (wav2vec2 {recorded[:15]}...); resume with the same "
            "--audio-encoder, so that every clip has audio features from one model"
        )
    if recorded is None:
        raise EmoError(
            f"{root} was made without --audio-encoder; resume without it, then give every clip its features "
            f"with `emo preprocess --add-audio-features --out {root} --audio-encoder {encoder_path}`"
        )
    raise EmoError(
        f"--audio-encoder {encoder_path} is a different wav2vec2 model ({encoder[:15]}...) from the one "
        f"that made the audio features of {root} ({recorded[:15]}...); use the same weights or a new --out "
        "directory"
    )


def config_from_dataset(root: Path) -> PreprocessConfig:
    data = mf.read_json(root / mf.DATASET_CONFIG)
    data.pop(ENCODER_KEY, None)
    return PreprocessConfig(**{**data, "scene": SceneConfig(**data["scene"])})


def run_preprocess(
    inputs: list[str | os.PathLike],
    root: str | os.PathLike,
    config: PreprocessConfig,
    workers: int = 1,
    shard: str | None = None,
    audio_encoder: str | None = None,
    retry_failed: bool = False,
    device: str = "cpu",
    progress: bool = True,
    process_fn=process_video,
) -> dict:
    """Process every video of ``inputs`` (this shard's share) into ``root``; returns the summary.

    Videos that already have a record are skipped (failed ones too, unless ``retry_failed``).
    ``process_fn`` is what a worker process runs per video: a module-level function with the signature of
    :func:`process_video` (the tests put one there that crashes its worker).
    """
    from tqdm import tqdm

    root = Path(root)
    index, num_shards = parse_shard(shard)
    videos = list_videos(inputs)
    encoder = audio_encoder_id(audio_encoder) if audio_encoder else None
    _check_dataset_config(root, config, encoder, audio_encoder)
    mine = videos[index::num_shards]
    if num_shards > 1:
        mf.write_json(
            root / mf.SHARDS / f"{index}-of-{num_shards}.json",
            {"shard": index, "num_shards": num_shards, "video_ids": sorted(video_id(v) for v in mine)},
        )
    # Leftovers of a killed run of this shard: its videos' temp folders (other shards' are theirs).
    _clear_tmp(root, {video_id(v) for v in mine})
    todo = []
    for video in mine:
        record_path = root / mf.VIDEOS / video_id(video) / mf.VIDEO_RECORD
        if record_path.is_file():
            if not (retry_failed and mf.read_json(record_path)["status"] == "failed"):
                continue
        todo.append(video)
    logger.info(
        "%d videos in the input%s; %d already done, %d to process",
        len(videos), f", {len(mine)} in shard {index}/{num_shards}" if num_shards > 1 else "",
        len(mine) - len(todo), len(todo),
    )
    bar = tqdm(total=len(todo), unit="video", disable=not progress or not todo)

    def done(record: dict) -> None:
        _log_record(record)
        bar.update()

    if todo:
        _process_in_workers(todo, root, config, workers, audio_encoder, device, process_fn, done)
    bar.close()
    return mf.build_manifest(root)


def _log_record(record: dict) -> None:
    if record["status"] == "ok":
        logger.info(
            "%s: %d clips kept, %d dropped (%.1f s)",
            record["source"], len(record["clips"]), len(record["dropped"]), record["_seconds"],
        )


def add_audio_features(
    root: str | os.PathLike,
    audio_encoder: str,
    shard: str | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    """Compute wav2vec2 features for every clip that has audio but no features yet; returns the summary.

    The encoder must be the one dataset.json records (if any: then it records this one), so that all
    features come from one model.

    ``shard`` 'i/N' takes every N-th such clip (cluster array jobs); each feature file is written
    atomically, so a killed run just resumes.
    """
    from tqdm import tqdm

    from emo.conditioning.audio import AudioEncoder
    from emo.media import load_audio

    root = Path(root)
    index, num_shards = parse_shard(shard)
    existing = mf.read_json(root / mf.DATASET_CONFIG)
    _check_encoder(root, existing, audio_encoder_id(audio_encoder), audio_encoder, adding=True)
    clips = [c for c in mf.read_manifest(root) if c["has_audio"]]
    clips = [c for c in clips[index::num_shards] if not (root / c["path"] / clipfmt.AUDIO_FEATURES).is_file()]
    if not clips:
        logger.info("every clip with audio already has audio features")
        return mf.build_manifest(root)
    encoder = AudioEncoder.from_pretrained(audio_encoder, device=device)
    for clip in tqdm(clips, unit="clip", disable=not progress):
        directory = root / clip["path"]
        wave = load_audio(directory / clipfmt.AUDIO, clipfmt.AUDIO_RATE)
        write_audio_features(directory, wave, clip["fps"], clip["num_frames"], encoder)
    return mf.build_manifest(root)

