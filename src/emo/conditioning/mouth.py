"""The mouth in latent space: a linear reader of its opening, and the mouth guide that steers sampling (ours).

A *mouth reader* is a linear map from the latents around the mouth to the mouth's opening (inner-lip gap over
inter-ocular distance, in standard deviations of the fitting set). It crops a square around the mouth box's
centre, its side a fixed multiple of the box's width, so the crop does not tell the opening by its height.
Training uses it for the mouth-reading loss (`emo.training.mouth_reading`).

The *mouth guide* is the small model's lip sync. The `small` network, trained on 6 minutes of video, does not
learn to move its lips with the speech from the diffusion loss (docs/small_model.md): the mouth's opening is
7.5 % of the mouth latents' variation, and the network ignores even a perfect opening signal. The guide puts
the opening in explicitly, as AniPortrait and V-Express put landmarks in, but at sampling time:

- an *audio reader*, a ridge map from each frame's window of audio features to its opening, predicts the
  opening the speech calls for;
- at each denoising step, the predicted clean frames' opening is read by the mouth reader, and their mouth
  latents are moved along the *opening direction* (how the mouth crop changes, on average over the fitting
  set, per standard deviation of opening) until it reads the audio's opening. The next steps denoise around
  the moved mouth, so the network draws the lips.

All three parts are fitted by ridge regression on a preprocessed training set
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


def crop_operator(box: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(4,) mouth box -> (GRID², h·w) the linear map `mouth_crops` applies to each latent channel."""
    basis = torch.eye(height * width, dtype=torch.float64).reshape(height * width, 1, height, width)
    return mouth_crops(basis, box.double()[None].expand(height * width, 4)).T  # (GRID², h·w)


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
    """The mouth reader, the opening direction and the audio reader: audio -> the mouth's opening, at sampling
    time (this module's docstring)."""

    reader: MouthReader
    direction: torch.Tensor  # (C·GRID²,) the mouth crop's mean change per standard deviation of opening
    audio: AudioReader
    gain: float  # the audio reader's openings are scaled by this (ridge shrinks them) to the real spread

    def openings(self, windows: torch.Tensor) -> torch.Tensor:
        """(F, 2m+1, L, D) windows of audio features -> (F,) the openings the guide steers the frames to."""
        return (self.gain * self.audio.read(windows)).float()

    def steer(
        self, frames: torch.Tensor, box: torch.Tensor, targets: torch.Tensor, strength: float = 1.0
    ) -> torch.Tensor:
        """(B, F, C, h, w) predicted clean frame latents, the (4,) mouth box, (F,) target openings -> the
        latents moved by ``strength`` of the way to read ``targets``: along the opening direction in the
        crop, put back onto the latent grid by the crop's least-norm inverse (nothing outside the crop moves).
        """
        b, f, c, h, w = frames.shape
        boxes = box.to(frames)[None].expand(b * f, 4)
        read = self.reader.read(mouth_crops(frames.flatten(0, 1).float(), boxes.float()))  # (B·F,)
        direction = self.direction.to(read)
        per_unit = direction @ self.reader.weight.to(read)  # how much one unit of direction reads
        amount = strength * (targets.to(read).repeat(b) - read) / per_unit  # (B·F,)
        crop_change = amount[:, None] * direction  # (B·F, C·GRID²)
        inverse = torch.linalg.pinv(crop_operator(box.cpu(), h, w)).to(read)  # (h·w, GRID²)
        change = crop_change.reshape(b * f, c, GRID * GRID) @ inverse.T  # (B·F, C, h·w)
        return frames + change.reshape(b, f, c, h, w).to(frames)

    # -- files ---------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        tensors = {
            "reader.weight": self.reader.weight.float(),
            "reader.bias": torch.tensor([self.reader.bias]),
            "direction": self.direction.float(),
            "audio.mean": self.audio.mean.float(),
            "audio.std": self.audio.std.float(),
            "audio.weight": self.audio.weight.float(),
            "audio.bias": torch.tensor([self.audio.bias]),
            "audio.half_window": torch.tensor([self.audio.half_window]),
            "gain": torch.tensor([self.gain]),
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
            guide = cls(
                MouthReader(t["reader.weight"], float(t["reader.bias"][0])),
                t["direction"],
                AudioReader(
                    t["audio.mean"],
                    t["audio.std"],
                    t["audio.weight"],
                    float(t["audio.bias"][0]),
                    int(t["audio.half_window"][0]),
                ),  # fmt: skip
                float(t["gain"][0]),
            )
        except (SafetensorError, KeyError, IndexError, OSError) as exc:
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
