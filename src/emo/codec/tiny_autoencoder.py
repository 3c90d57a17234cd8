"""Tiny autoencoders (the TAESD family): small conv encoder/decoder pairs distilled to reproduce a large
VAE's latent space at a fraction of its cost (about 1.2-1.4 M parameters a side against the SD VAE's 84 M).

Two layouts, told apart by their weights:

- ``"taesd"`` (madebyollin/taesd; diffusers' ``AutoencoderTiny``): 4 latent channels for SD1.5/SDXL
  (16 for the SD3/FLUX.1 variants). Its latents are already the SD VAE's *scaled* latents.
- ``"taef2"`` (FLUX.2's 32-channel space): the same stacks plus a residual "pool" branch before each of the
  three lowest-resolution blocks. Raw latents lie in about [-3, 3], std ~1, so they need no scaling either.

Both take images in [0, 1]; the codec converts from and to the [-1, 1] of :class:`~emo.codec.LatentCodec`.
Layer names follow the published ``*_encoder.pth`` / ``*_decoder.pth`` state dicts (``nn.Sequential``
indices), so those files load as they are. We build the modules here rather than reuse diffusers'
``EncoderTiny`` / ``DecoderTiny`` because those have no pool branch and nest their layers one level deeper;
``tests/test_codec.py`` checks parity with diffusers' ``AutoencoderTiny`` on the TAESD layout.

On disk, a codec folder (what :meth:`TinyAutoencoderCodec.save` writes, shipped inside an exported model) is::

    codec.json            describe(): kind, layout, latent_channels, width, scaling, shift
    encoder.safetensors   encoder state dict, the published key names
    decoder.safetensors   decoder state dict
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from emo.codec.base import LatentCodec
from emo.errors import EmoError

KIND = "tiny_autoencoder"
CONFIG_NAME = "codec.json"
ENCODER_NAME = "encoder.safetensors"
DECODER_NAME = "decoder.safetensors"

# Where the image-side convs sit in the published state dicts (nn.Sequential indices), used to tell an
# encoder from a decoder and to read the latent channel count.
_ENCODER_IN, _ENCODER_OUT = "0.weight", "14.weight"  # (width, 3, 3, 3), (latents, width, 3, 3)
_DECODER_IN, _DECODER_OUT = "1.weight", "19.weight"  # (width, latents, 3, 3), (3, width, 3, 3)


def _conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, kernel_size=3, padding=1, **kwargs)


class PoolBranch(nn.Sequential):
    """TAEF2's residual branch: 1x1 conv to 4x channels, GroupNorm(4), ReLU, 1x1 conv back. Per-pixel
    channel mixing with group statistics over the whole (small) feature map, which plain 3x3 convs lack."""

    def __init__(self, channels: int):
        super().__init__(
            nn.Conv2d(channels, 4 * channels, kernel_size=1, bias=False),
            nn.GroupNorm(4, 4 * channels),
            nn.ReLU(),
            nn.Conv2d(4 * channels, channels, kernel_size=1, bias=False),
        )


class TinyBlock(nn.Module):
    """Residual block: three 3x3 convs with ReLUs between, added to the input, then ReLU
    (diffusers' ``AutoencoderTinyBlock`` with equal in/out channels). With ``pool``, the pool branch is added
    to the input first; that order rebuilds the TAEF2 fixtures best (30.6 dB against 30.0 with the branch
    summed alongside the convs)."""

    def __init__(self, channels: int, pool: bool = False):
        super().__init__()
        self.conv = nn.Sequential(
            _conv(channels, channels),
            nn.ReLU(),
            _conv(channels, channels),
            nn.ReLU(),
            _conv(channels, channels),
        )
        self.pool = PoolBranch(channels) if pool else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return F.relu(self.conv(x) + x)


class SoftClamp(nn.Module):
    """tanh(x / 3) * 3: the decoder's first layer, keeping out-of-range latents (a sampler's overshoot) near [-3, 3]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class TinyEncoder(nn.Sequential):
    """(N, 3, H, W) in [0, 1] -> (N, latent_channels, H/8, W/8): three stride-2 convs, each followed by three
    blocks; ``pool`` puts the pool branch in the last three (lowest-resolution) blocks."""

    def __init__(self, latent_channels: int, width: int = 64, pool: bool = False):
        super().__init__(
            _conv(3, width),
            TinyBlock(width),
            _conv(width, width, stride=2, bias=False),
            *[TinyBlock(width) for _ in range(3)],
            _conv(width, width, stride=2, bias=False),
            *[TinyBlock(width) for _ in range(3)],
            _conv(width, width, stride=2, bias=False),
            *[TinyBlock(width, pool) for _ in range(3)],
            _conv(width, latent_channels),
        )


class TinyDecoder(nn.Sequential):
    """(N, latent_channels, h, w) -> (N, 3, 8h, 8w) in about [0, 1]: soft clamp, then three blocks before
    each 2x nearest upsampling; ``pool`` puts the pool branch in the first three (lowest-resolution) blocks."""

    def __init__(self, latent_channels: int, width: int = 64, pool: bool = False):
        super().__init__(
            SoftClamp(),
            _conv(latent_channels, width),
            nn.ReLU(),
            *[TinyBlock(width, pool) for _ in range(3)],
            nn.Upsample(scale_factor=2),
            _conv(width, width, bias=False),
            *[TinyBlock(width) for _ in range(3)],
            nn.Upsample(scale_factor=2),
            _conv(width, width, bias=False),
            *[TinyBlock(width) for _ in range(3)],
            nn.Upsample(scale_factor=2),
            _conv(width, width, bias=False),
            TinyBlock(width),
            _conv(width, 3),
        )


class TinyAutoencoderCodec(LatentCodec):
    """A frozen tiny autoencoder as a :class:`LatentCodec`.

    Model-space latents are ``(raw - shift) * scaling`` (diffusers' convention for ``shift_factor`` and
    ``scaling_factor``). Both published layouts need neither (scaling 1, shift 0); the fields exist so a
    codec whose raw latents are off-scale can be recorded with its normalisation in ``codec.json``.
    """

    def __init__(self, encoder: TinyEncoder, decoder: TinyDecoder, scaling: float = 1.0, shift: float = 0.0):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.latent_channels = encoder[-1].out_channels
        self.scaling = float(scaling)
        self.shift = float(shift)
        self.requires_grad_(False)
        self.eval()

    @property
    def layout(self) -> str:
        return "taef2" if self.encoder[-2].pool is not None else "taesd"

    def encode(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1], H and W multiples of 8 -> (N, C, H/8, W/8). Deterministic: ``generator``
        is accepted for the interface and ignored."""
        if pixels.shape[-2] % self.downscale or pixels.shape[-1] % self.downscale:
            raise ValueError(f"image size {tuple(pixels.shape[-2:])} is not a multiple of {self.downscale}")
        weight = self.encoder[0].weight
        images = (pixels.to(weight.device, weight.dtype) + 1) / 2  # TAESD works in [0, 1]
        raw = self.encoder(images)  # (N, C, H/8, W/8)
        return (raw - self.shift) * self.scaling

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) model-space latents -> (N, 3, 8h, 8w) in about [-1, 1] (not clamped)."""
        weight = self.decoder[1].weight
        raw = latents.to(weight.device, weight.dtype) / self.scaling + self.shift
        return self.decoder(raw) * 2 - 1  # (N, 3, 8h, 8w)

    def describe(self) -> dict:
        return {
            "kind": KIND,
            "layout": self.layout,
            "latent_channels": self.latent_channels,
            "downscale": self.downscale,
            "width": self.encoder[0].out_channels,
            "decoder_width": self.decoder[1].out_channels,
            "scaling": self.scaling,
            "shift": self.shift,
        }

    def save(self, directory: str | os.PathLike, dtype: torch.dtype = torch.float16) -> Path:
        """Write the codec folder (module docstring) to ``directory``. fp16 by default: the published weights
        are fp16, so it is lossless for them and halves the size of an fp32 copy."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, module in ((ENCODER_NAME, self.encoder), (DECODER_NAME, self.decoder)):
            state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in module.state_dict().items()}
            safetensors.torch.save_file(state, directory / name)
        (directory / CONFIG_NAME).write_text(json.dumps(self.describe(), indent=2) + "\n")
        return directory


def load_tiny_autoencoder(
    encoder_path: str | os.PathLike,
    decoder_path: str | os.PathLike,
    scaling: float = 1.0,
    shift: float = 0.0,
) -> TinyAutoencoderCodec:
    """Build a codec from a TAESD- or TAEF2-layout encoder and decoder file (``.pth`` state dicts as
    published, or ``.safetensors`` with the same keys); layout, width and latent channels come from the
    weights. Bad files raise a one-line :class:`EmoError` naming the file."""
    encoder_path, decoder_path = Path(encoder_path), Path(decoder_path)
    encoder_state = _read_state_dict(encoder_path, "encoder")
    decoder_state = _read_state_dict(decoder_path, "decoder")
    if _which_part(encoder_state) == "decoder" and _which_part(decoder_state) == "encoder":
        raise EmoError(
            f"{encoder_path} holds a tiny-autoencoder decoder and {decoder_path} an encoder: "
            "the two files are swapped; pass them the other way round"
        )
    for path, state, wanted in (
        (encoder_path, encoder_state, "encoder"),
        (decoder_path, decoder_state, "decoder"),
    ):
        part = _which_part(state)
        if part is None:
            raise EmoError(
                f"{path} is not a TAESD/TAEF2 {wanted} state dict (its keys are not the published layout); "
                f"pass a tiny autoencoder's *_{wanted}.pth or .safetensors"
            )
        if part != wanted:
            raise EmoError(
                f"{path} holds a tiny-autoencoder {part} where the {wanted} belongs; pass the *_{wanted} file"
            )

    latent_channels = encoder_state[_ENCODER_OUT].shape[0]
    if decoder_state[_DECODER_IN].shape[1] != latent_channels:
        raise EmoError(
            f"{encoder_path} makes {latent_channels} latent channels but {decoder_path} takes "
            f"{decoder_state[_DECODER_IN].shape[1]}: pass an encoder and decoder of the same autoencoder"
        )
    pools = (_has_pool(encoder_state), _has_pool(decoder_state))
    if pools[0] != pools[1]:
        layouts = ["taef2" if p else "taesd" for p in pools]
        raise EmoError(
            f"{encoder_path} is a {layouts[0]} encoder but {decoder_path} a {layouts[1]} decoder: "
            "pass an encoder and decoder of the same autoencoder"
        )
    encoder = TinyEncoder(latent_channels, encoder_state[_ENCODER_IN].shape[0], pools[0])
    decoder = TinyDecoder(latent_channels, decoder_state[_DECODER_IN].shape[0], pools[1])
    _load_into(encoder, encoder_state, encoder_path)
    _load_into(decoder, decoder_state, decoder_path)
    return TinyAutoencoderCodec(encoder, decoder, scaling=scaling, shift=shift)


def load_codec_folder(directory: str | os.PathLike) -> TinyAutoencoderCodec:
    """Load a codec folder: one written by :meth:`TinyAutoencoderCodec.save` (``codec.json`` + safetensors),
    or a folder holding one ``*encoder*`` and one ``*decoder*`` ``.pth``/``.safetensors`` file as published."""
    directory = Path(directory)
    if not directory.is_dir():
        raise EmoError(f"{directory}: codec folder not found; pass a folder written by the codec's save()")
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        encoder_path = _single_file(directory, "encoder")
        decoder_path = _single_file(directory, "decoder")
        return load_tiny_autoencoder(encoder_path, decoder_path)
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EmoError(f"{config_path}: not valid JSON ({exc}); write the folder again with save()") from exc
    if not isinstance(config, dict) or config.get("kind") != KIND:
        kind = config.get("kind") if isinstance(config, dict) else None
        raise EmoError(f"{config_path}: codec kind is {kind!r}, not {KIND!r}; load it with its own codec")
    codec = load_tiny_autoencoder(
        directory / ENCODER_NAME,
        directory / DECODER_NAME,
        config.get("scaling", 1.0),
        config.get("shift", 0.0),
    )
    for key in ("layout", "latent_channels"):
        if key in config and config[key] != codec.describe()[key]:
            raise EmoError(
                f"{config_path} says {key} {config[key]!r} but the weights beside it are "
                f"{codec.describe()[key]!r}; write the folder again with save()"
            )
    return codec


def shipped_taef2_dir() -> Path:
    """The TAEF2 codec folder shipped in the package (``emo/assets/taef2``; see its SOURCES.md)."""
    return Path(str(resources.files("emo.assets").joinpath("taef2")))


def load_taef2() -> TinyAutoencoderCodec:
    """The shipped TAEF2 codec: FLUX.2's 32-channel latent space, madebyollin/taesd weights (MIT)."""
    return load_codec_folder(shipped_taef2_dir())


def _read_state_dict(path: Path, wanted: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise EmoError(
            f"{path}: {wanted} weights not found; pass the path of a tiny autoencoder's *_{wanted} file"
        )
    # A damaged file raises any of RuntimeError, EOFError, OSError, UnpicklingError, SafetensorError, ...
    try:
        if path.suffix == ".safetensors":
            state = safetensors.torch.load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        detail = str(exc).strip().split("\n")[0].split(". ")[0][:100]  # torch's messages run to paragraphs
        reason = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
        raise EmoError(
            f"{path}: cannot be read as {wanted} weights ({reason}); the file is damaged or truncated: fetch it again"
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EmoError(
            f"{path} is not a plain state dict (name -> tensor); pass a tiny autoencoder's *_{wanted} file"
        )
    return state


def _which_part(state: dict[str, torch.Tensor]) -> str | None:
    """'encoder' or 'decoder' from the image-side conv (3 input channels vs 3 output channels)."""
    first, last = state.get(_ENCODER_IN), state.get(_ENCODER_OUT)
    if first is not None and first.ndim == 4 and first.shape[1] == 3 and last is not None and last.ndim == 4:
        return "encoder"
    first, last = state.get(_DECODER_IN), state.get(_DECODER_OUT)
    if first is not None and first.ndim == 4 and last is not None and last.ndim == 4 and last.shape[0] == 3:
        return "decoder"
    return None


def _has_pool(state: dict[str, torch.Tensor]) -> bool:
    return any(".pool." in key for key in state)


def _load_into(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        problems = [
            f"{len(keys)} {what} (e.g. {keys[0]!r})"
            for what, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("wrong shapes", wrong_shape),
            )
            if keys
        ]
        raise EmoError(f"{path} does not match the tiny-autoencoder layout: {', '.join(problems)}")
    module.load_state_dict(state)


def _single_file(directory: Path, part: str) -> Path:
    found = sorted(
        p
        for p in directory.iterdir()
        if part in p.name and p.suffix in (".pth", ".pt", ".safetensors") and p.is_file()
    )
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise EmoError(
            f"{directory}: expected {CONFIG_NAME} or exactly one *{part}*.pth/.safetensors file, found {names}"
        )
    return found[0]
