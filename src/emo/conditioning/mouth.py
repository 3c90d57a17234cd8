"""The mouth: a linear reader of its opening in latent space, and the mouth guide that moves the lips (ours).

A *mouth reader* is a linear map from the latents around the mouth to the mouth's opening (inner-lip gap over
inter-ocular distance, in standard deviations of the fitting set). It crops a square around the mouth box's
centre, its side a fixed multiple of the box's width, so the crop does not tell the opening by its height.
Training uses it for the mouth-reading loss (`emo.training.mouth_reading`).

The *mouth guide* is the small model's lip sync. The `small` network, trained on 6 minutes of video, does not
learn to move its lips with the speech from the diffusion loss (docs/small_model.md): the mouth's opening is
7.5 % of the mouth latents' variation, and the network ignores even a perfect opening signal. The guide puts
the opening in explicitly, as AniPortrait and V-Express put landmarks in, but into the generated frames:

- an *audio reader*, a ridge map from each frame's window of audio features to its opening, predicts the
  opening the speech calls for;
- the mouth reader reads the opening of each generated frame's latents, and the decoded frame's lips are moved
  apart (or together) by the difference (`open_mouth`: a warp of the lower lip and chin, the mouth's inside
  drawn between the lips).

So the lips are moved after the network has drawn the frame: the network itself does not hear. Two ways that
let the network draw the lips were tried and moved the visible mouth far less (docs/small_model.md): a latent
edit along the mean "opening" direction at every step (the reader read the target, but the decoded mouths were
darker, not open) and this warp at the middle steps only (the network closed the mouths again).
The readers are fitted by ridge regression on a preprocessed training set
(`emo.training.mouth_reading.fit_mouth_guide`); none is a neural network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from emo.conditioning.windows import window
from emo.errors import EmoError
from emo.media import atomic_path

FIT_COMMAND = "`python scripts/fit_mouth_reader.py DATA_DIR OUT`"  # how a user makes a reader
GRID = 4  # the crop is sampled on GRID x GRID latent positions
SIDE = 1.2  # the crop's side, in mouth-box widths
MOUTH_GUIDE = "mouth_guide.safetensors"  # in a model folder: its mouth guide


def crop_grid(boxes: torch.Tensor) -> torch.Tensor:
    """(N, 4) mouth boxes x0, y0, x1, y1 (fractions of the frame) -> (N, GRID, GRID, 2) grid_sample positions
    of a square around each box's centre, SIDE box widths across."""
    centre_x, centre_y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    half = SIDE / 2 * (boxes[:, 2] - boxes[:, 0])
    steps = torch.linspace(-1, 1, GRID, device=boxes.device, dtype=boxes.dtype)
    xs = (centre_x[:, None] + half[:, None] * steps) * 2 - 1  # (N, GRID), grid_sample's [-1, 1]
    ys = (centre_y[:, None] + half[:, None] * steps) * 2 - 1
    return torch.stack([xs[:, None, :].expand(-1, GRID, -1), ys[:, :, None].expand(-1, -1, GRID)], -1)


def mouth_crops(latents: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) latents, (N, 4) mouth boxes -> (N, C·GRID²) the latents bilinearly sampled on `crop_grid`."""
    grid = crop_grid(boxes.to(latents.dtype))
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
        check_channels(path, weight, latent_channels)
        return cls(weight, bias)


def check_channels(path: Path, weight: torch.Tensor, latent_channels: int | None) -> None:
    if latent_channels is not None and weight.numel() != latent_channels * GRID * GRID:
        raise EmoError(
            f"{path} reads latents of {weight.numel() // (GRID * GRID)} channels, the network's have "
            f"{latent_channels}: fit one on a dataset of this codec's latents with {FIT_COMMAND}"
        )


@dataclass
class AudioReader:
    """A ridge map from a frame's ±``half_window`` window of audio features (F, L, D) to its mouth opening."""

    mean: torch.Tensor  # ((2m+1)·L·D,) the features' mean and standard deviation on the fitting set
    std: torch.Tensor
    weight: torch.Tensor  # ((2m+1)·L·D,)
    bias: float
    half_window: int

    def read(self, windows: torch.Tensor) -> torch.Tensor:
        """(F, 2m+1, L, D) windows of audio features (`emo.conditioning.windows.window` with
        ``half_window``) -> (F,) the openings they call for, float64."""
        z = (windows.double().flatten(1) - self.mean.double()) / self.std.double()
        return z @ self.weight.double() + self.bias

    def read_track(self, features: torch.Tensor) -> torch.Tensor:
        """(F, L, D) a whole track's per-frame audio features -> (F,) openings."""
        return self.read(window(features, self.half_window))


@dataclass
class MouthGuide:
    """The audio reader and the mouth reader, with the scale of the openings they read: audio -> the mouth's
    opening in the generated frames (this module's docstring)."""

    reader: MouthReader
    audio: AudioReader
    gain: float  # the audio reader's openings are scaled by this (ridge shrinks them) to the real spread
    opening_std: float  # one standard deviation of opening, in lip gap / inter-ocular distance
    eyes_per_box: float  # the inter-ocular distance over the mouth box's width (median of the fitting set)

    def openings(self, windows: torch.Tensor) -> torch.Tensor:
        """(F, 2m+1, L, D) windows of audio features -> (F,) the openings the guide moves the lips to."""
        return (self.gain * self.audio.read(windows)).float()

    def gap_pixels(self, change: torch.Tensor, box: torch.Tensor, width: int) -> torch.Tensor:
        """(N,) changes of opening (standard deviations) -> (N,) how far the lips move apart, in pixels of a
        frame ``width`` wide whose mouth box is ``box``."""
        eyes = self.eyes_per_box * float(box[2] - box[0]) * width
        return change * self.opening_std * eyes

    def lip_gaps(
        self, latents: torch.Tensor, box: torch.Tensor, targets: torch.Tensor, strength: float, width: int
    ) -> torch.Tensor:
        """(F, C, h, w) generated frame latents, the (4,) mouth box, (F,) target openings -> (F,) how many pixels
        (of frames ``width`` wide) to part each frame's lips by (`open_mouth`; negative: close them), to take
        it ``strength`` of the way from the opening the mouth reader reads to its target."""
        boxes = box.to(latents)[None].expand(len(latents), 4)
        current = self.reader.read(mouth_crops(latents.float(), boxes.float()))
        return self.gap_pixels(strength * (targets.to(current) - current), box, width)

    # -- files ---------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        tensors = {
            "reader.weight": self.reader.weight.float(),
            "reader.bias": torch.tensor([self.reader.bias]),
            "audio.mean": self.audio.mean.float(),
            "audio.std": self.audio.std.float(),
            "audio.weight": self.audio.weight.float(),
            "audio.bias": torch.tensor([self.audio.bias]),
            "audio.half_window": torch.tensor([self.audio.half_window]),
            "scales": torch.tensor([self.gain, self.opening_std, self.eyes_per_box]),
        }
        with atomic_path(path) as temp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(temp))

    @classmethod
    def load(cls, path: str | Path, latent_channels: int | None = None) -> MouthGuide:
        path = Path(path)
        fix = "make one with `python scripts/fit_mouth_guide.py DATA_DIR MODEL_DIR`"
        if not path.is_file():
            raise EmoError(f"{path}: no mouth guide there; {fix}")
        try:
            t = load_file(str(path))
            gain, opening_std, eyes_per_box = (float(v) for v in t["scales"])
            guide = cls(
                MouthReader(t["reader.weight"], float(t["reader.bias"][0])),
                AudioReader(
                    t["audio.mean"],
                    t["audio.std"],
                    t["audio.weight"],
                    float(t["audio.bias"][0]),
                    int(t["audio.half_window"][0]),
                ),  # fmt: skip
                gain,
                opening_std,
                eyes_per_box,
            )
        except (SafetensorError, KeyError, IndexError, OSError, ValueError) as exc:
            raise EmoError(f"{path}: not a mouth guide ({exc}); {fix}") from None
        check_channels(path, guide.reader.weight, latent_channels)
        return guide

    def check_features(self, path: Path, layers: int, dims: int) -> None:
        """A guide fitted on other audio features (another front-end) is refused."""
        expected = (2 * self.audio.half_window + 1) * layers * dims
        if self.audio.weight.numel() != expected:
            raise EmoError(
                f"{path} was fitted on audio features of another shape than this model's ({layers} x {dims}); "
                "refit it on a dataset preprocessed with the model's audio front-end"
            )


# -- the lips moved apart, in pixels ------------------------------------------------------------------------
MOUTH_INSIDE = (-0.55, -0.8, -0.8)  # the colour drawn between parted lips, RGB in [-1, 1]: a dark red


def open_mouth(images: torch.Tensor, box: torch.Tensor, gaps: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) frames in [-1, 1], the (4,) mouth box (fractions), (N,) gaps in pixels -> the frames with the
    lower lip and the chin below it moved down by the gap (up, for a negative gap), and the mouth's inside
    drawn between the lips. The lips meet at the box's middle row; the shift fades out across the box's width
    (sin²) and below it over one box height (the chin follows the jaw)."""
    n, _, h, w = images.shape
    x0, y0, x1, y1 = (float(v) for v in box * torch.tensor([w, h, w, h]))
    lip_y, jaw = (y0 + y1) / 2, max(y1 - y0, 1.0)
    ys = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w) + 0.5
    xs = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w) + 0.5
    across = torch.sin(torch.pi * ((xs - x0) / max(x1 - x0, 1.0)).clamp(0, 1)) ** 2
    down = torch.where(ys < lip_y, 0.0, (1 - (ys - y1).clamp(min=0) / jaw).clamp(0, 1))
    shift = gaps.float()[:, None, None] * (across * down)[None]  # (N, H, W)
    source_y = ys[None] - shift
    grid = torch.stack([(xs[None].expand(n, h, w)) / w * 2 - 1, source_y / h * 2 - 1], -1)
    moved = F.grid_sample(images.float(), grid, align_corners=False, padding_mode="border")
    # Between the lips: where a pixel below the lip line takes its colour from above it.
    inside = ((source_y < lip_y) & (ys[None] >= lip_y)).float() * across[None]
    depth = ((lip_y - source_y) / gaps.abs().float().clamp(min=1)[:, None, None]).clamp(0, 1)
    alpha = (inside * (0.5 + 0.5 * depth))[:, None]  # darker away from the lips' edges
    colour = torch.tensor(MOUTH_INSIDE)[None, :, None, None]
    return moved * (1 - alpha) + colour * alpha
