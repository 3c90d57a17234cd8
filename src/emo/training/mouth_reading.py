"""Fitting the mouth's readers on a dataset, and the mouth-reading loss (ours, not the paper's).

The mouth reader (`emo.conditioning.mouth.MouthReader`) is fitted once, by ridge regression on a preprocessed
dataset's clean latents (`fit_mouth_reader`; for the `small` model's TAEF2 latents it reads the held-out clips'
openings at r 0.85). In training, the network's x0 error read through it is the error of the mouth's opening in
the predicted frame, and `train.mouth_reading` weighs its square into the loss (`reading_error`).

Why: the plain MSE spreads over every direction of the latents, and the mouth's opening is a small share of
them (7.5 % of the mouth crop's frame-to-frame variance at 16² latents). The `small` model trained on it learned to
ignore the audio, even when the audio features were replaced by the true opening (docs/small_model.md).

`fit_mouth_guide` fits the mouth guide that moves the generated lips instead (`emo.conditioning.mouth.MouthGuide`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from emo.conditioning.mouth import AudioReader, MouthGuide, MouthReader, mouth_crops
from emo.data.clips import LATENTS, META
from emo.errors import EmoError


def reading_error(latent_error: torch.Tensor, boxes: torch.Tensor, reader: MouthReader, keep: torch.Tensor):
    """(B, F, C, h, w) error of the predicted frame latents, (B, F, 4) mouth boxes, (B,) which samples count ->
    the mean squared error of the mouths' openings read through ``reader`` (its bias cancels)."""
    b, f = latent_error.shape[:2]
    read = mouth_crops(latent_error.flatten(0, 1), boxes.flatten(0, 1)) @ reader.weight.to(latent_error)
    weights = keep.to(read.dtype)[:, None].expand(b, f).flatten()
    return (read.pow(2) * weights).sum() / weights.sum().clamp_min(1)


def clips_of(dataset: str | Path) -> list[Path]:
    return sorted(p.parent for p in Path(dataset).glob(f"videos/*/*/{META}"))


def clip_openings(clip: Path) -> np.ndarray:
    """A preprocessed clip -> (F,) each frame's mouth opening (inner-lip gap / inter-ocular distance, from its
    Face Mesh landmarks); NaN where the face was not found."""
    from emo.eval.mouth import lip_gap

    meta = np.load(clip / META)
    opening = lip_gap(meta["landmarks"])
    opening[~meta["face_found"]] = np.nan
    return opening


def clip_crops(clip: Path) -> tuple[torch.Tensor, np.ndarray]:
    """A preprocessed clip -> (F', C·GRID²) mouth crops of its cached latents and (F',) mouth openings, for the
    F' frames where the face was found."""
    from emo.conditioning.face import mouth_boxes

    if not (clip / LATENTS).is_file():
        raise EmoError(f"{clip} has no {LATENTS}; preprocess the dataset with --codec to add latents")
    meta = np.load(clip / META)
    opening = clip_openings(clip)
    found = np.isfinite(opening)
    latents = load_file(str(clip / LATENTS))["latents"].float()
    boxes = torch.from_numpy(mouth_boxes(meta["landmarks"], meta["mask"].shape[-1]))
    return mouth_crops(latents, boxes)[torch.from_numpy(found)], opening[found]


def ridge_fit(x: np.ndarray, y: np.ndarray, penalty: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ridge regression of the centred targets ``y`` (N,) on the features ``x`` (N, K), each feature standardised:
    returns the features' mean and standard deviation and the weights w, so that ``((x - mean) / std) @ w``
    predicts ``y``."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / std
    return mean, std, np.linalg.solve(z.T @ z + penalty * np.eye(z.shape[1]), z.T @ y)


def fit_mouth_reader(dataset: str | Path, ridge: float = 1e3) -> tuple[MouthReader, dict]:
    """Ridge regression from each frame's mouth crop to its opening, over a preprocessed dataset with latents
    (`emo preprocess --codec`). Returns the reader and its fit (clips, frames, r on the fitting set)."""
    from emo.eval.mouth import pearson

    clips = clips_of(dataset)
    pairs = [clip_crops(clip) for clip in clips]
    if sum(len(y) for _, y in pairs) < 2:
        raise EmoError(f"{dataset}: no clips with faces to fit a mouth reader on")
    x = torch.cat([c for c, _ in pairs]).double().numpy()
    y = np.concatenate([y for _, y in pairs])
    y_mean, y_std = y.mean(), y.std() + 1e-12
    mean, std, w = ridge_fit(x, (y - y_mean) / y_std, ridge)
    weight = w / std  # the standardisation folded in
    reader = MouthReader(torch.from_numpy(weight).float(), float(-(mean @ weight)))
    return reader, {"clips": len(clips), "frames": len(y), "r": round(pearson(x @ weight, y), 3)}


def score_mouth_reader(reader: MouthReader, dataset: str | Path) -> list[float]:
    """Per clip of a preprocessed dataset (e.g. held-out clips): Pearson r of the read and the real opening."""
    from emo.eval.mouth import pearson

    scores = []
    for clip in clips_of(dataset):
        crops, opening = clip_crops(clip)
        scores.append(round(pearson(reader.read(crops).numpy(), opening), 3))
    return scores


def own_and_swapped_r(
    predicted: list[np.ndarray], openings: list[np.ndarray]
) -> tuple[list[float], list[float]]:
    """Per clip, Pearson r of the real openings with those predicted from the clip's own audio and, as the
    control, with those predicted from the next clip's audio (tiled or cut to this clip's length)."""
    from emo.eval.mouth import pearson

    own = [pearson(p, o) for p, o in zip(predicted, openings, strict=True)]
    swapped = [
        pearson(np.resize(predicted[(i + 1) % len(openings)], len(o)), o) for i, o in enumerate(openings)
    ]
    return own, swapped


def clip_audio(clip: Path) -> torch.Tensor:
    """A preprocessed clip's per-frame audio features, (F, L, D) float32."""
    return load_file(str(clip / "audio_features.safetensors"))["features"].float()


def fit_mouth_guide(
    dataset: str | Path, half_window: int = 2, audio_ridge: float = 1e4, reader_ridge: float = 1e3
) -> tuple[MouthGuide, dict]:
    """The mouth guide (`emo.conditioning.mouth`) of a preprocessed dataset with latents: the mouth reader, the
    audio reader (ridge from each frame's window of audio features to its opening) and the scales that turn an
    opening into pixels. Returns the guide and its fit."""
    from emo.conditioning.face import mouth_boxes
    from emo.conditioning.windows import window
    from emo.eval.mouth import EYES, pearson

    reader, fit = fit_mouth_reader(dataset, reader_ridge)
    clips = clips_of(dataset)
    openings = [clip_openings(c) for c in clips]
    seen = np.concatenate(openings)
    seen = seen[np.isfinite(seen)]  # the frames with a face
    y_mean, y_std = seen.mean(), seen.std() + 1e-12

    windows, targets, eyes_per_box = [], [], []
    for clip, opening in zip(clips, openings, strict=True):
        keep = np.isfinite(opening)
        windows.append(window(clip_audio(clip).double(), half_window).flatten(1).numpy()[keep])
        targets.append((opening[keep] - y_mean) / y_std)
        meta = np.load(clip / META)
        landmarks = meta["landmarks"][keep]
        boxes = mouth_boxes(landmarks, meta["mask"].shape[-1])
        eyes = np.linalg.norm(landmarks[:, EYES[0], :2] - landmarks[:, EYES[1], :2], axis=-1)
        eyes_per_box.append(eyes / (meta["mask"].shape[-1] * (boxes[:, 2] - boxes[:, 0]) + 1e-9))
    x, y = np.concatenate(windows), np.concatenate(targets)
    mean, std, w = ridge_fit(x, y - y.mean(), audio_ridge)
    predicted = ((x - mean) / std) @ w + y.mean()
    audio = AudioReader(
        torch.from_numpy(mean).float(), torch.from_numpy(std).float(), torch.from_numpy(w).float(),
        float(y.mean()), half_window,
    )  # fmt: skip
    gain = float(y.std() / max(predicted.std(), 1e-12))  # ridge shrinks: give the openings their real spread
    guide = MouthGuide(reader, audio, gain, float(y_std), float(np.median(np.concatenate(eyes_per_box))))
    fit.update({"audio r": round(pearson(predicted, y), 3), "gain": round(gain, 3),
                "opening std": round(guide.opening_std, 4), "eyes per mouth box": round(guide.eyes_per_box, 3)})  # fmt: skip
    return guide, fit
