"""Run the metrics over paired generated / ground-truth videos (``emo evaluate``).

Pairing is by file stem: ``GENERATED/<stem>.mp4`` is compared with ``REFERENCE/<stem>.<video ext>``;
``REFERENCE/<stem>.<image ext>``, when present, is the reference portrait for F-SIM (else the first
ground-truth frame). SyncNet listens to the generated mp4's own audio track.

Each video is decoded once; Face Mesh runs once per video (tracking mode) and its landmarks serve
SyncNet's crops, the ArcFace / Deep3DFaceRecon alignment, head motion and the landmark proxy. The
metrics themselves are objects in :mod:`emo.eval.metrics`; :func:`evaluate` hands each video to them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from emo.errors import EmoError
from emo.eval.metrics import MetricResult, StageTimer, Video, build_metrics
from emo.media import iter_video_frames, probe_video

VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".webm", ".avi")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class Pair:
    stem: str
    generated: Path  # generated mp4 (with the driving audio track)
    reference: Path  # ground-truth video
    image: Path | None  # reference portrait for F-SIM, if given


@dataclass
class EvalConfig:
    """What ``emo evaluate`` computes, and from which weight files."""

    inception: Path | None = None  # pt_inception-2015-12-05-6726825d.pth -> FID
    i3d: Path | None = None  # i3d_torchscript.pt -> FVD
    syncnet: Path | None = None  # syncnet_v2.model -> LSE-C / LSE-D
    arcface: Path | None = None  # insightface backbone.pth -> F-SIM
    deep3d: Path | None = None  # Deep3DFaceRecon epoch_20.pth -> E-FID
    lpips: Path | None = None  # LPIPS v0.1 heads alex.pth / vgg.pth -> LPIPS (with lpips_backbone)
    lpips_backbone: Path | None = None  # torchvision alexnet-owt-7be5be79.pth / vgg16-397923af.pth
    max_frames: int | None = None  # evaluate at most this many frames of each video (None: all)
    frame_stride: int = (
        1  # FID / F-SIM / E-FID / LPIPS look at every n-th frame (the per-frame networks are slow on CPU)
    )


@dataclass
class Evaluation:
    metrics: list[MetricResult]
    per_video: list[dict]
    frames: int  # generated frames evaluated
    seconds: float  # wall time of the whole evaluation
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage


def mark_non_finite(evaluation: Evaluation) -> Evaluation:
    """NaN / inf values (a network's overflow, a degenerate input) become None, with a note saying so.

    JSON has no NaN, and a number that is not one must not be ranked; the rest of the report stands.
    Applies to the metrics (status "unavailable") and to the per-video rows (listed under "notes").
    """
    for m in evaluation.metrics:
        if m.value is not None and not math.isfinite(m.value):
            why = f"the value was {m.value} (not finite), so it is not reported"
            m.value, m.status, m.note = None, "unavailable", "; ".join(filter(None, [why, m.note]))
    for row in evaluation.per_video:
        for key, value in list(row.items()):
            if isinstance(value, float) and not math.isfinite(value):
                row[key] = None
                row.setdefault("notes", []).append(f"{key} was {value} (not finite)")
    return evaluation


def find_pairs(generated: str | Path, reference: str | Path) -> list[Pair]:
    """Pair ``GENERATED/*.mp4`` with reference videos by stem; EmoError for anything unpaired."""
    generated, reference = Path(generated), Path(reference)
    for flag, folder in (("--generated", generated), ("--reference", reference)):
        if not folder.is_dir():
            raise EmoError(f"{flag} {folder}: no such directory")
    gen = sorted(p for p in generated.iterdir() if p.suffix.lower() == ".mp4" and p.is_file())
    if not gen:
        raise EmoError(f"--generated {generated}: no .mp4 files; run `emo generate` into it first")
    ref_videos = {
        p.stem: p for p in sorted(reference.iterdir()) if p.suffix.lower() in VIDEO_EXTS and p.is_file()
    }
    ref_images = {
        p.stem: p for p in sorted(reference.iterdir()) if p.suffix.lower() in IMAGE_EXTS and p.is_file()
    }
    missing = [p.name for p in gen if p.stem not in ref_videos]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise EmoError(
            f"--reference {reference}: no ground-truth video named like {missing[0]}{more}; "
            f"pairs are matched by file stem ({'/'.join(VIDEO_EXTS)})"
        )
    return [Pair(p.stem, p, ref_videos[p.stem], ref_images.get(p.stem)) for p in gen]


def _read_frames(path: Path, max_frames: int | None) -> tuple[list[np.ndarray], float]:
    fps = probe_video(path).fps
    frames = []
    for frame in iter_video_frames(path):
        frames.append(frame)
        if max_frames is not None and len(frames) >= max_frames:
            break
    if not frames:
        raise EmoError(f"video {path} has no frames")
    return frames, fps


def evaluate(pairs: list[Pair], config: EvalConfig, progress: bool = True) -> Evaluation:
    """Compute every metric whose weights are given; the rest are reported unavailable."""
    # Here, not at the top: `emo evaluate report` imports this module (through report.py) and reads JSON only.
    import torch

    from emo.conditioning.face import FaceAnalyzer

    started = time.perf_counter()
    timed = StageTimer()
    metrics, video_order = build_metrics(config, timed)
    for metric in metrics:
        metric.load()  # every network first, so a wrong weight file fails before any long work
    active = [m for m in video_order if m.available]
    per_video, total_frames = [], 0

    def face_mesh(frames):
        # A fresh tracker per video: tracking state must not carry over from the previous clip.
        with FaceAnalyzer() as analyzer:
            return list(analyzer.analyze_video(frames))

    try:
        with torch.inference_mode():
            for pair in tqdm(pairs, desc="evaluate", unit="video", disable=not progress):
                gen, gen_fps = timed("decode", _read_frames, pair.generated, config.max_frames)
                ref, ref_fps = timed("decode", _read_frames, pair.reference, config.max_frames)
                total_frames += len(gen)
                row: dict = {
                    "stem": pair.stem,
                    "frames": len(gen),
                    "reference_frames": len(ref),
                    "fps": gen_fps,
                }
                video = Video(pair, gen, gen_fps, timed("face_mesh", face_mesh, gen),
                              ref, ref_fps, timed("face_mesh", face_mesh, ref))  # fmt: skip
                row["face_found"] = sum(o is not None for o in video.obs_gen) / len(gen)
                for metric in active:
                    metric.update(video, row)
                per_video.append(row)
    finally:
        for metric in metrics:
            metric.close()
    results = [result for metric in metrics for result in metric.results()]
    return mark_non_finite(
        Evaluation(results, per_video, total_frames, time.perf_counter() - started, timed.seconds)
    )
