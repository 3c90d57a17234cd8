"""The mouth-reading loss (ours, not the paper's; `train.mouth_reading`).

A *mouth reader* is a linear map from the latents around the mouth to the mouth's opening (inner-lip gap over
inter-ocular distance, in standard deviations of the training set). It is fitted once, by ridge regression on a
preprocessed dataset's clean latents (`fit_mouth_reader`; for the `small` model's TAEF2 latents it reads the
held-out clips' openings at r 0.85). In training, the network's x0 error read through it is the error of the
mouth's opening in the predicted frame, and `train.mouth_reading` weighs its square into the loss.

Why: the plain MSE spreads over every direction of the latents, and the mouth's opening is a small share of
them (7.5 % of the mouth crop's frame-to-frame variance at 16² latents). The `small` model trained on it learned to
ignore the audio, even when the audio features were replaced by the true opening (docs/small_model.md).

The reader crops a square around the mouth box's centre, its side a fixed multiple of the box's width, so the
crop does not tell the opening by its height.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from emo.data.clips import LATENTS, META
from emo.errors import EmoError
from emo.media import atomic_path

FIT_COMMAND = "`python scripts/fit_mouth_reader.py DATA_DIR OUT`"  # how a user makes a reader
GRID = 4  # the crop is sampled on GRID x GRID latent positions
SIDE = 1.2  # the crop's side, in mouth-box widths


def mouth_crops(latents: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) latents, (N, 4) mouth boxes x0, y0, x1, y1 (fractions of the frame) -> (N, C·GRID²) the
    latents bilinearly sampled on a square around each box's centre, SIDE box widths across."""
    boxes = boxes.to(latents.dtype)
    centre_x, centre_y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    half = SIDE / 2 * (boxes[:, 2] - boxes[:, 0])
    steps = torch.linspace(-1, 1, GRID, device=latents.device, dtype=latents.dtype)
    xs = (centre_x[:, None] + half[:, None] * steps) * 2 - 1  # (N, GRID), grid_sample's [-1, 1]
    ys = (centre_y[:, None] + half[:, None] * steps) * 2 - 1
    grid = torch.stack([xs[:, None, :].expand(-1, GRID, -1), ys[:, :, None].expand(-1, -1, GRID)], -1)
    return F.grid_sample(latents, grid, align_corners=False).flatten(1)


@dataclass
class MouthReader:
    weight: torch.Tensor  # (C·GRID²,)
    bias: float  # opening = crop · weight + bias, in standard deviations of the fitting set's openings

    def read(self, crops: torch.Tensor) -> torch.Tensor:
        """(N, C·GRID²) mouth crops (`mouth_crops`) -> (N,) the mouths' openings."""
        return crops @ self.weight.to(crops) + self.bias

    def save(self, path: str | Path) -> None:
        tensors = {"weight": self.weight.float().contiguous(), "bias": torch.tensor([self.bias])}
        with atomic_path(path) as temp:
            save_file(tensors, str(temp))

    @classmethod
    def load(cls, path: str | Path, latent_channels: int | None = None) -> MouthReader:
        """The reader in ``path``; with ``latent_channels``, checked to read latents of that many channels."""
        path = Path(path)
        fix = f"make one with {FIT_COMMAND}"
        if not path.is_file():
            raise EmoError(f"train.mouth_reader {path} not found; {fix}")
        try:
            tensors = load_file(str(path))
            weight, bias = tensors["weight"], float(tensors["bias"][0])
        except (SafetensorError, KeyError, IndexError, OSError) as exc:
            raise EmoError(f"{path}: not a mouth reader ({exc}); {fix}") from None
        if latent_channels is not None and weight.numel() != latent_channels * GRID * GRID:
            raise EmoError(
                f"{path} reads latents of {weight.numel() // (GRID * GRID)} channels, the network's have "
                f"{latent_channels}: fit one on a dataset of this codec's latents with {FIT_COMMAND}"
            )
        return cls(weight, bias)


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
    mean, std = x.mean(0), x.std(0) + 1e-6
    y_mean, y_std = y.mean(), y.std() + 1e-12
    z = (x - mean) / std
    w = np.linalg.solve(z.T @ z + ridge * np.eye(z.shape[1]), z.T @ ((y - y_mean) / y_std))
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
