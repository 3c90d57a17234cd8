"""Pass 2 of one video (emo.data.video_processing): the kept clips' frames and annotations.

Resampled to ``fps``, each kept clip gets ONE fixed square crop (the expanded union of its face boxes,
so the head can move inside a still frame, as at generation time), resized to ``size``² and stored as
JPEG (emo.data.clips explains the format); face mesh on the crop gives per-frame boxes, landmarks, head
pose and rotation speed; the union of the boxes is the clip's face-region mask; the audio track becomes
16 kHz mono wav; wav2vec2 features are added when an encoder is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emo.conditioning.face import Box, FaceAnalyzer, crop_and_resize, region_mask, rotation_speed
from emo.data import clips as clipfmt
from emo.data.dataset_config import PreprocessConfig
from emo.data.scenes import Span
from emo.media import atomic_path, iter_video_frames, writing


def box_tuple(box) -> tuple[float, float, float, float]:
    return (float(box.x0), float(box.y0), float(box.x1), float(box.y1))


@dataclass
class ClipWork:
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


def extract_clips(source: Path, works: list[ClipWork], config: PreprocessConfig, make_tracker) -> None:
    """Pass 2: crop, resize, store and face-mesh every output frame of the kept clips."""
    if not works:
        return
    pending = sorted(works, key=lambda w: w.k0)
    current: ClipWork | None = None
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


def finish_clip(
    work: ClipWork, config: PreprocessConfig, audio: np.ndarray | None, audio_lead: int, encoder
) -> tuple[str | None, dict]:
    """Write meta.npz (+ audio) of an extracted clip; returns (drop reason or None, its record).

    ``audio_lead``: the index of the audio sample that plays with the first video frame (see
    emo.data.video_processing.process_video).
    """
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
    boxes = np.array([box_tuple(o.box) for o in work.observations if o is not None], dtype=np.float32)
    landmarks = np.stack(
        [np.asarray(o.landmarks, dtype=np.float32) for o in work.observations if o is not None]
    )
    angles = np.array(
        [[o.pose.yaw, o.pose.pitch, o.pose.roll] for o in work.observations if o is not None],
        dtype=np.float32,
    )
    everything = np.arange(num)

    def fill(values: np.ndarray) -> np.ndarray:
        flat = values.reshape(len(idx), -1)
        out = np.stack([np.interp(everything, idx, flat[:, j]) for j in range(flat.shape[1])], axis=1)
        return out.reshape(num, *values.shape[1:]).astype(values.dtype)

    boxes, landmarks, angles = fill(boxes), fill(landmarks), fill(angles)
    # Missing frames are NaN rotations: rotation_speed holds the nearest valid one.
    rotations = np.stack(
        [np.full((3, 3), np.nan) if o is None else np.asarray(o.pose.rotation) for o in work.observations]
    )
    speed = np.asarray(rotation_speed(rotations, config.fps, config.fps), dtype=np.float32).reshape(num)
    # The paper's face region: the union of the clip's face boxes (what may move is where the face went).
    union = Box(
        float(boxes[:, 0].min()), float(boxes[:, 1].min()), float(boxes[:, 2].max()), float(boxes[:, 3].max())
    )
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
        crop_box=np.asarray(box_tuple(work.crop), dtype=np.float32),
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
    # torch here, not at the top: worker processes import this module and need torch only with an audio encoder.
    import torch
    from safetensors.torch import save_file

    features = encoder.frame_features(wave, fps, num_frames=num_frames).to(torch.float16).contiguous()
    with writing(clip_dir / clipfmt.AUDIO_FEATURES), atomic_path(clip_dir / clipfmt.AUDIO_FEATURES) as temp:
        save_file({"features": features}, str(temp))


class ClipTracker:
    """Face Mesh tracking over one clip, fed one frame at a time.

    A fresh MediaPipe graph per clip: tracking state carried over from another clip (or another video
    that happened to run in the same worker) would make results depend on the processing order.
    """

    def __init__(self):
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
