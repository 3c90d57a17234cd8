"""Run the metrics over paired generated / ground-truth videos (``emo evaluate``).

Pairing is by file stem: ``GENERATED/<stem>.mp4`` is compared with ``REFERENCE/<stem>.<video ext>``;
``REFERENCE/<stem>.<image ext>``, when present, is the reference portrait for F-SIM (else the first
ground-truth frame). SyncNet listens to the generated mp4's own audio track.

Each video is decoded once; Face Mesh runs once per video (tracking mode) and its landmarks serve
SyncNet's crops, the ArcFace / Deep3DFaceRecon alignment, head motion and the landmark proxy.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emo.errors import EmoError

logger = logging.getLogger(__name__)

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
    from emo.media import iter_video_frames, probe_video

    fps = probe_video(path).fps
    frames = []
    for frame in iter_video_frames(path):
        frames.append(frame)
        if max_frames is not None and len(frames) >= max_frames:
            break
    if not frames:
        raise EmoError(f"video {path} has no frames")
    return frames, fps


def _resample_indices(n: int, src_fps: float, fps: float) -> list[int]:
    """Nearest source frame for each output time k/fps over the clip's span."""
    count = max(1, int(np.floor(n * fps / src_fps + 1e-6)))
    return [min(n - 1, int(round(k * src_fps / fps))) for k in range(count)]


def _fill_boxes(observations) -> list[tuple[float, float, float, float]] | None:
    """Per-frame face boxes with missing frames taking the nearest detected box; None if never found."""
    found = [i for i, o in enumerate(observations) if o is not None]
    if not found:
        return None
    out = []
    for i in range(len(observations)):
        o = observations[min(found, key=lambda j: abs(j - i))]
        out.append((o.box.x0, o.box.y0, o.box.x1, o.box.y1))
    return out


def _resize_to(frame: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    import cv2

    if frame.shape == shape:
        return frame
    return cv2.resize(frame, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)


def evaluate(pairs: list[Pair], config: EvalConfig, progress: bool = True) -> Evaluation:
    """Compute every metric whose weights are given; the rest are reported unavailable."""
    import torch
    from tqdm import tqdm

    from emo.conditioning.face import FaceAnalyzer
    from emo.eval import arcface, expression, i3d, inception, lpips, syncnet
    from emo.eval.frechet import feature_frechet_distance
    from emo.eval.motion import head_motion_stats, video_rotation_speed
    from emo.eval.reconstruction import psnr, ssim
    from emo.media import load_audio

    started = time.perf_counter()
    timings: dict[str, float] = {}

    def timed(stage: str, fn: Callable, *a, **kw):
        t = time.perf_counter()
        out = fn(*a, **kw)
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - t
        return out

    # Load every network first, so a wrong weight file fails before any long work.
    nets = {}
    if config.inception:
        nets["inception"] = inception.load_inception(config.inception)
    if config.i3d:
        nets["i3d"] = i3d.load_i3d(config.i3d)
    if config.syncnet:
        nets["syncnet"] = syncnet.load_syncnet(config.syncnet)
    if config.arcface:
        nets["arcface"] = arcface.load_arcface(config.arcface)
    if config.deep3d:
        nets["deep3d"] = expression.load_deep3d(config.deep3d)
    if bool(config.lpips) != bool(config.lpips_backbone):
        raise EmoError(
            "LPIPS needs both --lpips (v0.1 heads) and --lpips-backbone (torchvision alexnet/vgg16)"
        )
    if config.lpips:
        nets["lpips"] = lpips.load_lpips(config.lpips, config.lpips_backbone)

    feats: dict[str, list[np.ndarray]] = {k: [] for k in (
        "fid_gen", "fid_ref", "fvd_gen", "fvd_ref", "exp_gen", "exp_ref", "lmk_gen", "lmk_ref")}  # fmt: skip
    speeds_gen, speeds_ref, per_video = [], [], []
    sync_scores, fsim_values, psnr_values, ssim_values, lpips_values = [], [], [], [], []
    fsim_reference_values = []  # F-SIM of the ground truth itself: the value F-SIM should come close to
    mouth_corr = []
    notes: dict[str, list[str]] = {}
    total_frames = 0

    def face_mesh(frames):
        # A fresh tracker per video: tracking state must not carry over from the previous clip.
        with FaceAnalyzer() as analyzer:
            return list(analyzer.analyze_video(frames))

    with torch.inference_mode(), FaceAnalyzer() as still_analyzer:
        for pair in tqdm(pairs, desc="evaluate", unit="video", disable=not progress):
            gen, gen_fps = timed("decode", _read_frames, pair.generated, config.max_frames)
            ref, ref_fps = timed("decode", _read_frames, pair.reference, config.max_frames)
            total_frames += len(gen)
            row: dict = {"stem": pair.stem, "frames": len(gen), "reference_frames": len(ref), "fps": gen_fps}

            obs_gen = timed("face_mesh", face_mesh, gen)
            obs_ref = timed("face_mesh", face_mesh, ref)
            row["face_found"] = sum(o is not None for o in obs_gen) / len(gen)
            if "i3d" in nets and abs(gen_fps - ref_fps) > 1e-3 * ref_fps:
                # FVD takes 16 consecutive frames on each side: at other rates they span other durations.
                logger.warning(
                    "%s: generated at %.4g fps, ground truth at %.4g fps; FVD's 16-frame clips then cover "
                    "different durations (generate at the ground truth's frame rate)",
                    pair.stem, gen_fps, ref_fps,
                )  # fmt: skip
                notes.setdefault("fvd", []).append(
                    f"{pair.stem}: {gen_fps:.4g} fps vs ground truth {ref_fps:.4g}"
                )

            # Self-reconstruction: each ground-truth frame against the generated frame nearest in time
            # (frame i vs frame i when the rates agree), generated resized to the ground truth's size.
            at = _resample_indices(len(gen), gen_fps, ref_fps)
            n = min(len(at), len(ref))
            p = [timed("psnr", psnr, _resize_to(gen[at[i]], ref[i].shape), ref[i]) for i in range(n)]
            try:
                s = [timed("ssim", ssim, _resize_to(gen[at[i]], ref[i].shape), ref[i]) for i in range(n)]
            except ValueError as exc:  # frames under SSIM's 11×11 window
                raise EmoError(f"{pair.reference}: {exc}; evaluate videos of a usable size") from None
            row["psnr"], row["ssim"] = float(np.mean(p)), float(np.mean(s))
            psnr_values += p
            ssim_values += s
            if "lpips" in nets:
                pairs_at = range(0, n, config.frame_stride)
                d = timed(
                    "lpips",
                    lpips.lpips_distances,
                    nets["lpips"],
                    [_resize_to(gen[at[i]], ref[i].shape) for i in pairs_at],
                    [ref[i] for i in pairs_at],
                )
                row["lpips"] = float(np.mean(d))
                lpips_values += list(d)

            # Head motion (EMO's speed ablation) from our pose estimator.
            for obs, fps, out, key in ((obs_gen, gen_fps, speeds_gen, "head_velocity"),
                                       (obs_ref, ref_fps, speeds_ref, "reference_head_velocity")):  # fmt: skip
                speed = timed("motion", video_rotation_speed, obs, fps)
                if speed is not None:
                    out.append(speed)
                    row[key] = float(speed.mean())

            corr = timed("mouth", _mouth_one, pair, obs_gen, gen_fps, load_audio, notes)
            if corr is not None:
                mouth_corr.append(corr[0])
                row["mouth_audio_corr"], row["mouth_audio_lag"] = corr

            for obs, key in ((obs_gen, "lmk_gen"), (obs_ref, "lmk_ref")):
                feats[key] += [expression.landmark_expression(o.landmarks, o.pose.rotation) for o in obs if o]

            stride = config.frame_stride
            if "inception" in nets:
                for frames, key in ((gen, "fid_gen"), (ref, "fid_ref")):
                    feats[key].append(
                        timed("fid", inception.inception_features, nets["inception"], frames[::stride])
                    )
            if "i3d" in nets:
                for frames, key in ((gen, "fvd_gen"), (ref, "fvd_ref")):
                    clips = i3d.video_clips(frames)
                    if clips:
                        feats[key].append(timed("fvd", i3d.i3d_features, nets["i3d"], clips))
                    else:
                        notes.setdefault("fvd", []).append(
                            f"{pair.stem}: shorter than {i3d.CLIP_FRAMES} frames"
                        )
            if "syncnet" in nets:
                score = timed(
                    "syncnet", _sync_one, nets["syncnet"], pair, gen, gen_fps, obs_gen, load_audio, notes
                )
                if score is not None:
                    sync_scores.append(score)
                    row.update(lse_c=score.confidence, lse_d=score.distance, av_offset=score.offset)
            if "arcface" in nets:
                value, value_ref = timed(
                    "fsim", _fsim_one, nets["arcface"], pair, gen, obs_gen, ref, obs_ref, stride,
                    still_analyzer, notes,
                )  # fmt: skip
                if value is not None:
                    fsim_values.append(value)
                    row["fsim"] = value
                if value_ref is not None:
                    fsim_reference_values.append(value_ref)
                    row["reference_fsim"] = value_ref
            if "deep3d" in nets:
                for frames, obs, key in ((gen, obs_gen, "exp_gen"), (ref, obs_ref, "exp_ref")):
                    faces = [expression.align_deep3d(f, o.landmarks)
                             for f, o in zip(frames[::stride], obs[::stride], strict=True) if o]  # fmt: skip
                    if faces:
                        feats[key].append(
                            timed("efid", expression.expression_coefficients, nets["deep3d"], faces)
                        )
            per_video.append(row)

    def fd(key_a: str, key_b: str, stage: str) -> tuple[float | None, str]:
        a, b = feats[key_a], feats[key_b]
        a = np.concatenate(a) if a and isinstance(a[0], np.ndarray) and a[0].ndim == 2 else np.array(a)
        b = np.concatenate(b) if b and isinstance(b[0], np.ndarray) and b[0].ndim == 2 else np.array(b)
        if len(a) < 2 or len(b) < 2:
            return None, f"needs at least 2 feature vectors on each side, got {len(a)} and {len(b)}"
        for side, x in (("generated", a), ("ground-truth", b)):
            bad = int((~np.isfinite(x.reshape(len(x), -1))).any(axis=1).sum())
            if bad:
                return None, f"{bad} of {len(x)} {side} feature vectors hold NaN or inf values"
        return timed(
            stage, feature_frechet_distance, a, b
        ), f"{len(a)} generated vs {len(b)} ground-truth samples"

    metrics: list[MetricResult] = []

    def add(name, label, better, weights_flag, compute, weights_name="", closer_to=""):
        m = MetricResult(name, label, better, closer_to=closer_to)
        if weights_flag is not None and not getattr(config, weights_flag.lstrip("-")):
            m.status, m.enable = "unavailable", f"{weights_flag} PATH"
            if weights_flag == "--lpips":
                m.enable += " --lpips-backbone PATH"
            m.note = f"needs {weights_name}"
        else:
            m.value, m.note = compute()
            if m.value is None:
                m.status = "unavailable"
            if notes.get(name):
                m.note = "; ".join(filter(None, [m.note, *notes[name][:3]]))
        metrics.append(m)

    add("fid", "FID", "lower", "--inception", lambda: fd("fid_gen", "fid_ref", "fid"), inception.WEIGHTS_NAME)
    add("fvd", "FVD", "lower", "--i3d", lambda: fd("fvd_gen", "fvd_ref", "fvd"), i3d.WEIGHTS_NAME)
    sync_note = f"{len(sync_scores)} videos, offsets ±{syncnet.VSHIFT}"
    notes["lse_c"] = notes["lse_d"] = notes.get("syncnet", [])
    add("lse_c", "Sync LSE-C", "higher", "--syncnet",
        lambda: (float(np.mean([s.confidence for s in sync_scores])) if sync_scores else None, sync_note),
        syncnet.WEIGHTS_NAME)  # fmt: skip
    add("lse_d", "Sync LSE-D", "lower", "--syncnet",
        lambda: (float(np.mean([s.distance for s in sync_scores])) if sync_scores else None, sync_note),
        syncnet.WEIGHTS_NAME)  # fmt: skip
    # EMO.md §6: for F-SIM "closer to ground truth is better" (a still face would score near 100).
    notes["reference_fsim"] = notes.get("fsim", [])
    add("fsim", "F-SIM", "closer", "--arcface",
        lambda: (float(np.mean(fsim_values)) if fsim_values else None,
                 "mean cosine × 100; closer to the ground truth's F-SIM is better"),
        arcface.WEIGHTS_NAME, closer_to="reference_fsim")  # fmt: skip
    add("reference_fsim", "F-SIM, ground truth", "", "--arcface",
        lambda: (float(np.mean(fsim_reference_values)) if fsim_reference_values else None,
                 "the ground-truth videos against the same reference image"),
        arcface.WEIGHTS_NAME)  # fmt: skip
    add(
        "efid",
        "E-FID",
        "lower",
        "--deep3d",
        lambda: fd("exp_gen", "exp_ref", "efid"),
        expression.WEIGHTS_NAME,
    )
    add(
        "psnr",
        "PSNR (dB)",
        "higher",
        None,
        lambda: (float(np.mean(psnr_values)) if psnr_values else None, "per frame, averaged"),
    )
    add(
        "ssim",
        "SSIM",
        "higher",
        None,
        lambda: (float(np.mean(ssim_values)) if ssim_values else None, "per frame, averaged"),
    )
    add("lpips", "LPIPS", "lower", "--lpips",
        lambda: (float(np.mean(lpips_values)) if lpips_values else None, f"{nets['lpips'].net_type}, paired frames"),
        "LPIPS v0.1 alex.pth/vgg.pth + torchvision backbone")  # fmt: skip
    add(
        "lmk_expr_fd",
        "Landmark expression FD (proxy)",
        "lower",
        None,
        lambda: fd("lmk_gen", "lmk_ref", "lmk"),
    )
    add(
        "mouth_audio_corr",
        "Mouth-audio correlation (proxy)",
        "higher",
        None,
        lambda: (float(np.mean(mouth_corr)) if mouth_corr else None, "Pearson r, mouth opening vs loudness"),
    )
    for prefix, speeds, who in (("", speeds_gen, "generated"), ("reference_", speeds_ref, "ground truth")):
        stats = head_motion_stats(speeds) if speeds else None
        for key, label in (("mean_velocity", "head velocity mean (°/frame @30 fps)"),
                           ("within_clip_variance", "head velocity within-clip variance"),
                           ("clip_mean_variance", "head velocity variance of clip means")):  # fmt: skip
            metrics.append(MetricResult(
                f"{prefix}head_{key}", f"{label}, {who}", "",
                value=None if stats is None else stats[key],
                status="ok" if stats else "unavailable",
                note="" if stats else "no face found",
            ))  # fmt: skip
    return mark_non_finite(
        Evaluation(metrics, per_video, total_frames, time.perf_counter() - started, timings)
    )


def _mouth_one(pair: Pair, observations, fps, load_audio, notes) -> tuple[float, int] | None:
    from emo.eval import mouth

    try:
        audio = load_audio(pair.generated, sample_rate=16000)
    except EmoError as exc:
        notes.setdefault("mouth_audio_corr", []).append(f"{pair.stem}: {exc}")
        return None
    opening = mouth.mouth_opening(observations)
    r, lag = mouth.mouth_audio_correlation(opening, mouth.audio_loudness(audio, 16000, fps, len(opening)))
    if not np.isfinite(r):
        notes.setdefault("mouth_audio_corr", []).append(f"{pair.stem}: mouth or audio constant")
        return None
    return r, lag


def _sync_one(model, pair: Pair, frames, fps, observations, load_audio, notes) -> object | None:
    from emo.eval import syncnet

    try:
        audio = load_audio(pair.generated, sample_rate=syncnet.SAMPLE_RATE)
    except EmoError as exc:
        notes.setdefault("syncnet", []).append(f"{pair.stem}: {exc}")
        return None
    boxes = _fill_boxes(observations)
    if boxes is None:
        notes.setdefault("syncnet", []).append(f"{pair.stem}: no face found")
        return None
    index = _resample_indices(len(frames), fps, syncnet.FPS)  # SyncNet expects 25 fps
    crops = syncnet.crop_faces([frames[i] for i in index], [boxes[i] for i in index])
    try:
        return syncnet.evaluate_sync(model, crops, audio)
    except ValueError as exc:
        notes.setdefault("syncnet", []).append(f"{pair.stem}: {exc}")
        return None


def _fsim_one(model, pair: Pair, gen, obs_gen, ref, obs_ref, stride, analyzer, notes):
    """(F-SIM of the generated video, F-SIM of the ground truth), both against the same reference image."""
    from emo.eval import arcface
    from emo.media import load_image

    if pair.image is not None:
        image = load_image(pair.image)
        ref_obs = analyzer.analyze(image)
    else:
        image, ref_obs = ref[0], obs_ref[0]
    if ref_obs is None:
        notes.setdefault("fsim", []).append(f"{pair.stem}: no face in the reference")
        return None, None
    reference = arcface.align_face(image, ref_obs.landmarks)
    values = []
    for frames, obs, who in ((gen, obs_gen, "generated"), (ref, obs_ref, "ground-truth")):
        faces = [arcface.align_face(f, o.landmarks)
                 for f, o in zip(frames[::stride], obs[::stride], strict=True) if o is not None]  # fmt: skip
        if not faces:
            notes.setdefault("fsim", []).append(f"{pair.stem}: no face in the {who} video")
        values.append(arcface.fsim(model, reference, faces) if faces else None)
    return values[0], values[1]
