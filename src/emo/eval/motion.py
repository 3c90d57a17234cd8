"""Head-motion statistics of EMO's speed ablation (EMO paper Sec. 4.4, EMO.md §6).

EMO reports, per speed setting, the mean head velocity and how it varies. We measure head rotation
speed with our own pose estimator (:func:`emo.conditioning.face.rotation_speed`: geodesic angle between
consecutive lightly smoothed head rotations, in degrees per frame at 30 fps, so videos of any frame
rate compare) and summarise a set of clips (one clip = one video) by:

- ``mean_velocity``: mean speed over all frames of all clips;
- ``within_clip_variance``: mean over clips of the variance of speed inside each clip (how much the
  motion changes within a clip);
- ``clip_mean_variance``: variance of the clips' mean speeds (how much clips differ from each other).
"""

from __future__ import annotations

import numpy as np

from emo.conditioning.face import rotation_speed
from emo.eval.metrics import Entry, Metric, Video


def video_rotation_speed(observations, fps: float) -> np.ndarray | None:
    """Per-frame head speed (°/frame at 30 fps) of one video's face observations; None if no face."""
    rotations = np.stack([
        o.pose.rotation if o is not None else np.full((3, 3), np.nan) for o in observations
    ])  # fmt: skip  # (N, 3, 3)
    if not np.isfinite(rotations).all(axis=(1, 2)).any():
        return None
    return rotation_speed(rotations, src_fps=fps, target_fps=30.0)


def head_motion_stats(speeds: list[np.ndarray]) -> dict[str, float]:
    """Summarise per-clip speed arrays (see the module docstring)."""
    if not speeds:
        raise ValueError("no clips")
    means = np.array([float(np.mean(s)) for s in speeds])
    return {
        "mean_velocity": float(np.mean(np.concatenate(speeds))),
        "within_clip_variance": float(np.mean([np.var(s) for s in speeds])),
        "clip_mean_variance": float(np.var(means)),
    }


_STATS = (("mean_velocity", "head velocity mean (°/frame @30 fps)"),
          ("within_clip_variance", "head velocity within-clip variance"),
          ("clip_mean_variance", "head velocity variance of clip means"))  # fmt: skip
_SIDES = (("", "generated"), ("reference_", "ground truth"))


class HeadMotion(Metric):
    """The statistics above for the generated and the ground-truth videos."""

    entries = tuple(Entry(f"{prefix}head_{key}", f"{label}, {who}", "")
                    for prefix, who in _SIDES for key, label in _STATS)  # fmt: skip

    def __init__(self, config, timed):
        super().__init__(config, timed)
        self.gen_speeds, self.ref_speeds = [], []  # per video, (N,) °/frame

    def update(self, video: Video, row: dict) -> None:
        for obs, fps, speeds, key in ((video.obs_gen, video.gen_fps, self.gen_speeds, "head_velocity"),
                                      (video.obs_ref, video.ref_fps, self.ref_speeds, "reference_head_velocity")):  # fmt: skip
            speed = self.timed("motion", video_rotation_speed, obs, fps)
            if speed is not None:
                speeds.append(speed)
                row[key] = float(speed.mean())

    def compute(self) -> list[tuple[float | None, str]]:
        out = []
        for speeds in (self.gen_speeds, self.ref_speeds):
            stats = head_motion_stats(speeds) if speeds else None
            out += [(stats[key], "") if stats else (None, "no face found") for key, _ in _STATS]
        return out
