"""One source video -> ``DIR/videos/<video_id>/`` (EMO paper Sec. 4.1; EMO.md §4).

One source video is one unit of work, done by :func:`process_video` in two streaming passes:

1. **Analysis** at the source frame rate (here): every frame feeds the scene-cut detector
   (emo.data.scenes); every ``1/analysis_fps`` seconds a frame also gets face detection and the
   camera-motion tracker (emo.data.motion). Scenes are cut into clips of ``min_clip_s``..``max_clip_s``;
   each clip is kept or dropped with a recorded reason: ``too_short``, ``no_face``, ``multiple_faces``,
   ``face_too_small``, ``camera_motion``, ``face_lost`` (face mesh did not find the face in enough
   cropped frames).
2. **Extraction** resampled to ``fps`` (30) of the kept clips: crops, frames, annotations and audio
   (emo.data.clip_extraction).

Everything a video produces is written under ``DIR/tmp/`` and renamed to ``DIR/videos/<video_id>/``
when complete, with its ``video.json`` record inside. A video that cannot be read gets a ``failed``
record with the reason instead.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emo.conditioning.face import Box, FaceAnalyzer, square_crop_box
from emo.data import clips as clipfmt
from emo.data import manifest as mf
from emo.data.clip_extraction import ClipTracker, ClipWork, box_tuple, extract_clips, finish_clip
from emo.data.dataset_config import PreprocessConfig
from emo.data.motion import CameraMotion
from emo.data.scenes import SceneCutDetector, Span, scenes_from_cuts, split_scene
from emo.errors import EmoError
from emo.media import USER_WRITE_ERRNOS, WriteError, iter_video_frames, load_audio, probe_video, write_error

logger = logging.getLogger(__name__)


def video_id(path: Path) -> str:
    """Stable id of a source video: its name plus a hash of its absolute path (names may repeat)."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", path.stem)[:48] or "video"
    return f"{stem}-{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]}"


@dataclass
class _Sample:
    """What the analysis pass learned at one sampled frame."""

    time_s: float
    faces: list  # face boxes in source pixels, largest first
    camera_speed: float | None  # background speed since the previous sample (widths / s)


def _analyse(source: Path, info, config: PreprocessConfig, analyzer) -> tuple[list[int], int, list[_Sample]]:
    """Pass 1: scene cuts (every frame) and face/camera samples (every 1/analysis_fps s)."""
    import cv2  # here: the preprocessing main process imports this module and needs no cv2 (~50 MiB)

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
        boxes = [tuple(v / scale for v in box_tuple(b)) for b in analyzer.detect(small)]  # source pixels
        speed = motion.push(
            cv2.cvtColor(tiny, cv2.COLOR_RGB2GRAY), time_s, [tuple(v * tiny_scale for v in b) for b in boxes]
        )
        samples.append(_Sample(time_s, boxes, speed))
    return detector.finish(), count, samples


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
        1
        for s in with_face
        if len(s.faces) > 1
        and (s.faces[1][3] - s.faces[1][1]) >= config.multi_face_ratio * (s.faces[0][3] - s.faces[0][1])
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


class Tools:
    """Per-process heavy objects (face detector, audio encoder), built once per worker."""

    def __init__(self, audio_encoder: str | None, device: str = "cpu"):
        self.analyzer = FaceAnalyzer()
        self.make_tracker = ClipTracker
        self.encoder = None
        if audio_encoder:
            # Here, not at the top: it loads torch, which a worker without an audio encoder does without.
            from emo.conditioning.audio_front_end import load_audio_front_end

            self.encoder = load_audio_front_end(audio_encoder, device=device)


def process_video(source: Path, root: Path, config: PreprocessConfig, tools: Tools) -> dict:
    """Preprocess one video into ``root/videos/<video_id>/`` (atomically); returns its record.

    Never raises for a bad video: the record then has ``status: failed`` and the error.
    """
    vid = video_id(source)
    tmp = tmp_dir(root, vid)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    record: dict = {"video_id": vid, "source": str(source), "status": "ok", "error": None}
    started = time.perf_counter()
    try:
        info = probe_video(source)
        record["info"] = {
            "fps": info.fps,
            "width": info.width,
            "height": info.height,
            "duration_s": info.duration_s,
            "has_audio": info.has_audio,
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
                boxes = [
                    Box(*s.faces[0]) for s in samples if span.start_s <= s.time_s < span.end_s and s.faces
                ]
                crop = square_crop_box(boxes, info.width, info.height, config.crop_expand)
                k0, k1 = _frame_range(span, config.fps, info.fps)
                clip_id = f"{vid}_{len(works):03d}"
                works.append(ClipWork(clip_id, span, k0, k1, crop, stats, tmp / clip_id))
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
            extract_clips(source, works, config, tools.make_tracker)
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
            reason, clip = finish_clip(work, config, audio, audio_lead, tools.encoder)
            if reason:
                shutil.rmtree(work.directory)
                dropped.append(_drop(work.span, reason, work.stats))
                continue
            clip.update(video_id=vid, source=str(source), path=f"{mf.VIDEOS}/{vid}/{work.clip_id}")
            kept.append(clip)
        record["clips"] = kept
        record["dropped"] = sorted(dropped, key=lambda d: d["start_s"])
    # Stopped, or the disk refused an output (full, read-only: not the video's fault, so the run stops rather
    # than recording the video as failed): nothing half-written stays.
    except (KeyboardInterrupt, SystemExit, WriteError):
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except EmoError as exc:
        record.update(status="failed", error=str(exc), clips=[], dropped=[])
    except OSError as exc:
        if exc.errno in USER_WRITE_ERRNOS:
            shutil.rmtree(tmp, ignore_errors=True)
            raise write_error(exc, root) from None
        logger.debug("%s failed", source, exc_info=True)
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}", clips=[], dropped=[])
    except Exception as exc:  # a broken file can break a decoder in many ways; keep the run going
        logger.debug("%s failed", source, exc_info=True)
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}", clips=[], dropped=[])
    if record["status"] == "failed":
        logger.warning("%s: failed: %s", source, record["error"])
        for child in tmp.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    mf.write_json(tmp / mf.VIDEO_RECORD, record)
    commit(tmp, root / mf.VIDEOS / vid)
    record["_seconds"] = time.perf_counter() - started  # for progress/benchmarks, not stored
    return record


def tmp_dir(root: Path, vid: str) -> Path:
    # Host and pid in the name: two processes (or shards on a shared disk) never write the same folder.
    return root / mf.TMP / f"{vid}.{socket.gethostname()}-{os.getpid()}"


def clear_tmp(root: Path, ids: set[str]) -> None:
    """Remove the work in progress of these videos (left by a killed run or a dead worker)."""
    tmp_root = root / mf.TMP
    if ids and tmp_root.is_dir():
        for entry in tmp_root.iterdir():
            if entry.name.split(".", 1)[0] in ids:
                shutil.rmtree(entry, ignore_errors=True)


def _drop(span: Span, reason: str, stats: dict) -> dict:
    return {
        "start_s": round(span.start_s, 6),
        "end_s": round(span.end_s, 6),
        "reason": reason,
        "stats": stats,
    }


def commit(tmp: Path, final: Path) -> None:
    """Make a finished video folder visible in one rename (replacing an older record, e.g. a retry)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        trash = tmp.with_name(tmp.name + ".old")
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
