"""Scene cuts and clip splitting (EMO paper, Sec. 4.1: videos are split into clips at scene cuts).

Cuts are found with PySceneDetect's detectors, fed frame by frame from our own decoding pass (the
preprocessing pass that also finds faces), so a video is decoded once for analysis. The default is
PySceneDetect's ``AdaptiveDetector``: it compares each frame's HSV content change with the rolling
average of its neighbours, which keeps fast head motion and zooms inside one scene while still firing
on hard cuts; ``ContentDetector`` (a fixed threshold) is available too.

A scene is then cut into clips of ``min_clip_s``..``max_clip_s`` seconds of equal length (a 20 s
scene with max 12 s gives two 10 s clips, not 12 + 8); a scene shorter than ``min_clip_s`` is
dropped with reason ``too_short``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# scenedetect and cv2 are imported inside the functions that use them: `emo --help` and the `emo preprocess`
# parser import this module, and stay quick.

DETECTORS = ("adaptive", "content")


@dataclass(frozen=True)
class SceneConfig:
    detector: str = "adaptive"  # "adaptive" (PySceneDetect AdaptiveDetector) or "content" (ContentDetector)
    threshold: float = 3.0  # adaptive: ratio of a frame's change to its neighbours'; content: HSV delta (27)
    min_content: float = 15.0  # adaptive only: a cut also needs at least this absolute HSV change
    min_scene_s: float = 0.5  # no two cuts closer than this (seconds); flashes do not split scenes
    analysis_width: int = 320  # frames are downscaled to this width before comparing (speed, noise)


class SceneCutDetector:
    """Streaming scene-cut detector: ``push`` frames in order, then ``finish`` returns the cut frames.

    A cut at frame k means frame k is the first frame of a new scene.
    """

    def __init__(self, fps: float, config: SceneConfig | None = None):
        from scenedetect.detectors import AdaptiveDetector, ContentDetector

        self.fps = float(fps)
        self.config = config = config or SceneConfig()
        min_len = max(1, int(round(config.min_scene_s * self.fps)))
        if config.detector == "adaptive":
            self._detector = AdaptiveDetector(
                adaptive_threshold=config.threshold, min_scene_len=min_len, min_content_val=config.min_content
            )
        elif config.detector == "content":
            self._detector = ContentDetector(threshold=config.threshold, min_scene_len=min_len)
        else:
            raise ValueError(f"scene detector must be one of {DETECTORS}, got {config.detector!r}")
        self._index = 0
        self._cuts: list[int] = []

    def _timecode(self, index: int):
        from scenedetect.common import FrameTimecode

        return FrameTimecode(index, fps=self.fps)

    def push(self, frame_rgb: np.ndarray) -> None:
        """Feed the next frame, (H, W, 3) uint8 RGB, any size (downscaled here)."""
        import cv2

        height, width = frame_rgb.shape[:2]
        if width > self.config.analysis_width:
            new_h = max(1, round(height * self.config.analysis_width / width))
            frame_rgb = cv2.resize(
                frame_rgb, (self.config.analysis_width, new_h), interpolation=cv2.INTER_AREA
            )
        frame_bgr = cv2.cvtColor(np.ascontiguousarray(frame_rgb), cv2.COLOR_RGB2BGR)  # PySceneDetect uses BGR
        for timecode in self._detector.process_frame(self._timecode(self._index), frame_bgr):
            self._cuts.append(int(timecode.frame_num))
        self._index += 1

    def finish(self) -> list[int]:
        """Flush the detector; returns the sorted frame indices where a new scene starts (never 0)."""
        if self._index:
            for timecode in self._detector.post_process(self._timecode(self._index - 1)):
                self._cuts.append(int(timecode.frame_num))
        return sorted({c for c in self._cuts if 0 < c < self._index})


@dataclass(frozen=True)
class Span:
    """A time span of a source video, in seconds: [start_s, end_s)."""

    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def scenes_from_cuts(cut_frames: list[int], num_frames: int, fps: float) -> list[Span]:
    """Turn cut frame indices into scene spans covering frames [0, num_frames)."""
    bounds = [0, *sorted(c for c in cut_frames if 0 < c < num_frames), num_frames]
    return [Span(a / fps, b / fps) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def split_scene(scene: Span, min_clip_s: float, max_clip_s: float) -> tuple[list[Span], list[Span]]:
    """Cut one scene into clips of equal length within [min_clip_s, max_clip_s].

    Returns (clips, too_short): a scene shorter than ``min_clip_s`` comes back in ``too_short``. When
    equal pieces would be shorter than ``min_clip_s`` (only possible if min > max / 2), pieces of
    ``max_clip_s`` are taken and a remainder shorter than ``min_clip_s`` is returned as too short.
    """
    if not 0 < min_clip_s <= max_clip_s:
        raise ValueError(f"need 0 < min_clip_s <= max_clip_s, got {min_clip_s}, {max_clip_s}")
    duration = scene.duration_s
    eps = 1e-6  # float slack so a 3.0 s scene is not "shorter than 3 s"
    if duration < min_clip_s - eps:
        return [], [scene]
    pieces = max(1, math.ceil(duration / max_clip_s - eps))
    length = duration / pieces
    if length < min_clip_s - eps:
        pieces, length = int(duration // max_clip_s), max_clip_s
    clips = [Span(scene.start_s + i * length, scene.start_s + (i + 1) * length) for i in range(pieces)]
    rest = Span(clips[-1].end_s, scene.end_s) if clips else scene
    return clips, ([rest] if rest.duration_s > eps else [])
