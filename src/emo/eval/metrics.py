"""The metric protocol of ``emo evaluate``: one :class:`Metric` object per metric, and the registry.

Each metric lives next to its network (:class:`~emo.eval.inception.FID`, :class:`~emo.eval.i3d.FVD`,
:class:`~emo.eval.syncnet.SyncNetLSE`, :class:`~emo.eval.arcface.FSIM`, :class:`~emo.eval.expression.EFID`,
:class:`~emo.eval.reconstruction.Reconstruction`, :class:`~emo.eval.lpips.LPIPSDistance`, and the
weight-free :class:`~emo.eval.expression.LandmarkExpressionFD`, :class:`~emo.eval.mouth.MouthAudio`,
:class:`~emo.eval.motion.HeadMotion`). A metric declares the report entries it gives
(:attr:`Metric.entries`) and the weight-file flag it needs (:attr:`Metric.flag`); without that file
it is reported unavailable with the flag, never computed with a substitute network. Otherwise it
loads its network before any video (:meth:`~Metric.load`), looks at each :class:`Video` (decoded
once, Face Mesh run once; :meth:`~Metric.update` adds its per-video values to the row) and at the end
gives a value and a note per entry (:meth:`~Metric.compute`). Problems met on the way (no face, no
audio) are collected in :attr:`Metric.notes`; the first three join the note of each of its entries.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from emo.eval.frechet import feature_frechet_distance

if TYPE_CHECKING:
    from emo.eval.evaluate import EvalConfig, Pair


@dataclass
class MetricResult:
    name: str  # key in the JSON
    label: str  # table label
    better: str  # "lower" / "higher" / "closer" (to the ground truth's value, see closer_to) / "" (neither)
    value: float | None = None
    status: str = "ok"  # "ok" or "unavailable"
    enable: str = ""  # the flag that enables it when unavailable
    note: str = ""
    closer_to: str = ""  # better="closer": the metric holding the ground truth's value

    def to_json(self) -> dict:
        out = {"value": self.value, "status": self.status, "better": self.better, "label": self.label}
        if self.closer_to:
            out["closer_to"] = self.closer_to
        if self.enable:
            out["enable"] = self.enable
        if self.note:
            out["note"] = self.note
        return out


class Entry(NamedTuple):
    """One line of the report (the fields of :class:`MetricResult` a metric fixes)."""

    name: str
    label: str
    better: str
    closer_to: str = ""


class StageTimer:
    """Seconds spent per stage (decoding, Face Mesh, each metric's work), summed over the videos."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def __call__(self, stage: str, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)``, its wall time added to ``stage``."""
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t
        return out


@dataclass
class Video:
    """One generated / ground-truth pair as every metric sees it."""

    pair: Pair
    gen: list[np.ndarray]  # generated frames, (H, W, 3) uint8 RGB
    gen_fps: float
    obs_gen: list  # Face Mesh observation per generated frame (None: no face)
    ref: list[np.ndarray]  # ground-truth frames
    ref_fps: float
    obs_ref: list

    @cached_property
    def paired_frames(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(generated, ground truth) for self-reconstruction: each ground-truth frame with the generated
        frame nearest in time (frame i with frame i when the rates agree), resized to the ground truth's."""
        at = resample_indices(len(self.gen), self.gen_fps, self.ref_fps)
        n = min(len(at), len(self.ref))
        return [(_resize_to(self.gen[at[i]], self.ref[i].shape), self.ref[i]) for i in range(n)]


class Metric:
    """One metric: what it reports, what it needs, what it does with each video."""

    entries: tuple[Entry, ...] = ()  # its lines in the report, in table order
    flag = ""  # the option giving its weight file ("--inception"); "": it needs none
    weights_name = ""  # the public weight file, for the "needs ..." note

    def __init__(self, config: EvalConfig, timed: StageTimer):
        self.config, self.timed = config, timed
        self.net = None
        self.notes: list[str] = []  # per-video problems

    @property
    def weights(self):
        """The weight file given (None: not given, or it needs none)."""
        # The EvalConfig field is named like the flag: --deep3d -> config.deep3d.
        return getattr(self.config, self.flag.lstrip("-")) if self.flag else None

    @property
    def available(self) -> bool:
        """Whether it can be computed: it needs no weights, or its weight file was given."""
        return not self.flag or bool(self.weights)

    @property
    def enable(self) -> str:
        """The flag(s) that make it available."""
        return f"{self.flag} PATH"

    def load(self) -> None:
        """Load the network, before any video, so that a wrong weight file fails before any long work."""
        if self.flag and self.available:
            self.net = self.load_network(self.weights)

    def load_network(self, path):
        raise NotImplementedError

    def update(self, video: Video, row: dict) -> None:
        """Look at one video (called only when available); per-video values go into ``row``."""

    def compute(self) -> list[tuple[float | None, str]]:
        """(value, note) per entry over all videos seen; value None: not computable (the note says why)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the metric holds open."""

    def results(self) -> list[MetricResult]:
        """Its report entries: computed, or unavailable with the flag that enables it."""
        if not self.available:
            return [MetricResult(e.name, e.label, e.better, status="unavailable", enable=self.enable,
                                 note=f"needs {self.weights_name}", closer_to=e.closer_to)
                    for e in self.entries]  # fmt: skip
        out = []
        for e, (value, note) in zip(self.entries, self.compute(), strict=True):
            m = MetricResult(e.name, e.label, e.better, value, closer_to=e.closer_to, note=note)
            if value is None:
                m.status = "unavailable"
            if self.notes:
                m.note = "; ".join(filter(None, [note, *self.notes[:3]]))
            out.append(m)
        return out


def mean(values: list[float]) -> float | None:
    """The mean, None for no values (a metric no video gave a value to)."""
    return float(np.mean(values)) if values else None


class FrechetMetric(Metric):
    """Fréchet distance between the generated and the ground-truth feature sets."""

    stage = ""  # its key in the stage timings

    def __init__(self, config: EvalConfig, timed: StageTimer):
        super().__init__(config, timed)
        # Per-video (n, D) blocks or per-frame (D,) vectors, generated and ground truth.
        self.gen_features: list[np.ndarray] = []
        self.ref_features: list[np.ndarray] = []

    def compute(self) -> list[tuple[float | None, str]]:
        a, b = _stack(self.gen_features), _stack(self.ref_features)
        if len(a) < 2 or len(b) < 2:
            return [(None, f"needs at least 2 feature vectors on each side, got {len(a)} and {len(b)}")]
        for side, x in (("generated", a), ("ground-truth", b)):
            bad = int((~np.isfinite(x.reshape(len(x), -1))).any(axis=1).sum())
            if bad:
                return [(None, f"{bad} of {len(x)} {side} feature vectors hold NaN or inf values")]
        distance = self.timed(self.stage, feature_frechet_distance, a, b)
        return [(distance, f"{len(a)} generated vs {len(b)} ground-truth samples")]


def _stack(features: list) -> np.ndarray:
    if features and isinstance(features[0], np.ndarray) and features[0].ndim == 2:
        return np.concatenate(features)
    return np.array(features)


def build_metrics(config: EvalConfig, timed: StageTimer) -> tuple[list[Metric], list[Metric]]:
    """Every metric, twice: in report order, and in the order they see each video.

    Report order is EMO's Table 1, then the rest; the networks load in this order too. Per video the
    weight-free checks run first (a frame too small for SSIM fails before any network works on it);
    that order also sets the order of the keys in each per-video row.
    """
    # Here, not at the top: each metric module imports this one, and `emo evaluate report` needs no torch.
    from emo.eval.arcface import FSIM
    from emo.eval.expression import EFID, LandmarkExpressionFD
    from emo.eval.i3d import FVD
    from emo.eval.inception import FID
    from emo.eval.lpips import LPIPSDistance
    from emo.eval.motion import HeadMotion
    from emo.eval.mouth import MouthAudio
    from emo.eval.reconstruction import Reconstruction
    from emo.eval.syncnet import SyncNetLSE

    fid, fvd, lse, fsim, efid = (cls(config, timed) for cls in (FID, FVD, SyncNetLSE, FSIM, EFID))
    recon, lpips, lmk, mouth, motion = (
        cls(config, timed)
        for cls in (Reconstruction, LPIPSDistance, LandmarkExpressionFD, MouthAudio, HeadMotion)
    )
    report = [fid, fvd, lse, fsim, efid, recon, lpips, lmk, mouth, motion]
    return report, [recon, lpips, motion, mouth, lmk, fid, fvd, lse, fsim, efid]


def resample_indices(n: int, src_fps: float, fps: float) -> list[int]:
    """Nearest source frame for each output time k/fps over the clip's span."""
    count = max(1, int(np.floor(n * fps / src_fps + 1e-6)))
    return [min(n - 1, int(round(k * src_fps / fps))) for k in range(count)]


def _resize_to(frame: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    import cv2  # here: `emo evaluate report` imports this module (through evaluate.py) and needs no cv2

    if frame.shape == shape:
        return frame
    return cv2.resize(frame, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
