"""Load the weights real users have on disk, from local paths only (never a hub).

- SD1.5 UNet -> backbone and ReferenceNet: a diffusers folder (the pipeline root or its `unet/`) or a single
  file (`.safetensors` / `.ckpt` in the original LDM key layout, converted with diffusers' converter).
- AnimateDiff motion module (`mm_sd_v15_v2.ckpt` layout, `.ckpt` or `.safetensors`) or a diffusers
  `MotionAdapter` folder -> the backbone's temporal modules.
- SD VAE from a diffusers folder (the pipeline root or its `vae/`).

`.ckpt`/`.pt`/`.bin` files are read with `torch.load(weights_only=True)`: never unpickled. Every load returns
a `LoadReport`; a tensor whose shape does not fit fails with an error naming the key.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from emo.errors import WEIGHT_LOAD_ERRORS, EmoError

log = logging.getLogger(__name__)

# What a `from_pretrained` of a damaged or foreign folder raises (a truncated safetensors file raises
# SafetensorError, which is none of the others); callers turn these into a one-line EmoError.

# In the order they are looked for; the `.fp16` names are the half-precision variants some SD1.5 downloads hold
# alone (their tensors are cast to the model's dtype on load).
WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.fp16.bin",
)


@dataclass
class LoadReport:
    """What a load did. `ignored` are checkpoint keys left out by design (e.g. SD's text cross-attention)."""

    target: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)  # model keys the checkpoint did not fill
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys the model has no place for
    ignored: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.target}: loaded {self.loaded} tensors, {len(self.missing)} missing (new layers), "
            f"{len(self.unexpected)} unexpected, {len(self.ignored)} ignored by design"
        )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors or torch checkpoint file (weights only) into a flat state dict."""
    path = Path(path)
    if not path.is_file():
        raise EmoError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, or a pickle that is more than weights
        raise EmoError(f"cannot read weights from {path}: {str(exc).splitlines()[0]}") from exc
    for key in ("state_dict", "module"):  # Lightning / DeepSpeed wrappers
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise EmoError(f"{path} does not hold a state dict")
    return state


def _weights_in_folder(folder: Path) -> Path:
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise EmoError(f"no weights file ({' or '.join(WEIGHT_NAMES)}) in {folder}")


def load_into(
    module: nn.Module, state: dict[str, torch.Tensor], target: str, ignore: tuple[str, ...] = ()
) -> LoadReport:
    """Copy matching tensors into `module`; keys matching an `ignore` regex are skipped by design."""
    report = LoadReport(target)
    own = module.state_dict()
    fitted = {}
    for key, value in state.items():
        if any(re.search(pattern, key) for pattern in ignore):
            report.ignored.append(key)
        elif key not in own:
            report.unexpected.append(key)
        elif own[key].shape != value.shape:
            raise EmoError(
                f"{target}: checkpoint tensor {key} has shape {tuple(value.shape)}, the model expects "
                f"{tuple(own[key].shape)}: the checkpoint does not fit this model configuration"
            )
        else:
            fitted[key] = value
    module.load_state_dict(fitted, strict=False)
    report.loaded = len(fitted)
    report.missing = sorted(set(own) - set(fitted))
    log.info(report.summary())
    if report.unexpected:
        log.warning("%s: unexpected keys, e.g. %s", target, ", ".join(report.unexpected[:5]))
    return report


# -- SD1.5 -----------------------------------------------------------------------------------------
# SD's text cross-attention has no place in EMO (audio-attention takes that slot, EMO.md §2).
SD_IGNORED = (r"\.transformer_blocks\.\d+\.attn2\.", r"\.transformer_blocks\.\d+\.norm2\.")
SD_IGNORED_REFERENCE = SD_IGNORED + (r"^conv_norm_out\.", r"^conv_out\.")


def read_sd_unet(path: str | Path, layers_per_block: int = 2) -> dict[str, torch.Tensor]:
    """SD UNet weights in diffusers naming, from a diffusers folder or an LDM single-file checkpoint."""
    path = Path(path)
    if path.is_dir():
        folder = path / "unet" if (path / "unet").is_dir() else path
        return read_state_dict(_weights_in_folder(folder))
    if not path.exists():
        raise EmoError(f"SD1.5 weights not found: {path}")
    state = read_state_dict(path)
    if not any(k.startswith("model.diffusion_model.") for k in state):
        # Already diffusers-named (e.g. a bare unet safetensors file).
        if any(k.startswith("down_blocks.") for k in state):
            return state
        raise EmoError(f"{path} is neither an LDM checkpoint (model.diffusion_model.*) nor a diffusers UNet")
    # Here, not at the top: a second to import, and only an LDM-format checkpoint needs it.
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    return convert_ldm_unet_checkpoint(state, {"layers_per_block": layers_per_block})


def load_sd15(model, path: str | Path) -> list[LoadReport]:
    """SD1.5 UNet weights into the backbone and the ReferenceNet of an `EMO` model."""
    state = read_sd_unet(path, model.backbone.config.layers_per_block)
    reports = []
    for name, ignore in (("backbone", SD_IGNORED), ("reference_net", SD_IGNORED_REFERENCE)):
        reports.append(load_into(getattr(model, name), state, f"{name} <- {path}", ignore))
    return reports


# -- AnimateDiff --------------------------------------------------------------------------------------
def motion_adapter_to_animatediff(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers MotionAdapter names -> AnimateDiff names (inverse of diffusers' conversion script)."""
    out = {}
    for key, value in state.items():
        if "pos_embed" in key:  # the sinusoidal table: identical by construction, rebuilt by the model
            continue
        m = re.match(r"^(.*motion_modules\.\d+)\.(.*)$", key)
        if m is None:
            continue
        prefix, rest = m.groups()
        rest = (
            rest.replace("attn1.", "attention_blocks.0.")
            .replace("attn2.", "attention_blocks.1.")
            .replace("norm1.", "norms.0.")
            .replace("norm2.", "norms.1.")
            .replace("norm3.", "ff_norm.")
        )
        out[f"{prefix}.temporal_transformer.{rest}"] = value
    return out


def read_motion_module(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.is_dir():
        return motion_adapter_to_animatediff(read_state_dict(_weights_in_folder(path)))
    state = read_state_dict(path)
    if not any(".temporal_transformer." in k for k in state):
        raise EmoError(
            f"{path} holds no AnimateDiff motion-module keys (*.motion_modules.*.temporal_transformer.*)"
        )
    return state


def load_motion_module(model, path: str | Path) -> LoadReport:
    """AnimateDiff v2 (or diffusers MotionAdapter) weights into the backbone's temporal modules."""
    state = read_motion_module(path)
    # The positional table is deterministic; a checkpoint's table of another length (v1: 24) is not an error.
    own = model.backbone.state_dict()
    other_length = [
        k for k, v in state.items() if k.endswith("pos_encoder.pe") and k in own and own[k].shape != v.shape
    ]
    report = load_into(
        model.backbone,
        {k: v for k, v in state.items() if k not in other_length},
        f"temporal modules <- {path}",
    )
    report.ignored += other_length
    # The rest of the backbone comes from SD1.5; the positional tables are built, not learned.
    report.missing = [
        k for k in report.missing if ".motion_modules." in k and not k.endswith("pos_encoder.pe")
    ]
    return report


# -- VAE ----------------------------------------------------------------------------------------------
def load_vae(path: str | Path, torch_dtype: torch.dtype | None = None):
    """SD's AutoencoderKL from a diffusers folder (the pipeline root or its `vae/`)."""
    # Here, not at the top: seconds to import, and every codec user imports this module (emo.codec.sd_vae),
    # also those with a tiny autoencoder.
    from diffusers import AutoencoderKL

    path = Path(path)
    folder = path / "vae" if (path / "vae").is_dir() else path
    if not (folder / "config.json").is_file():
        raise EmoError(f"no VAE at {path}: expected a diffusers AutoencoderKL folder (config.json + weights)")
    # diffusers reads a half-precision-only folder only when asked for its "fp16" variant.
    variant = "fp16" if _weights_in_folder(folder).name.startswith("diffusion_pytorch_model.fp16.") else None
    try:
        return AutoencoderKL.from_pretrained(
            folder, torch_dtype=torch_dtype, local_files_only=True, variant=variant
        )
    except WEIGHT_LOAD_ERRORS as exc:
        raise EmoError(f"cannot load the VAE from {folder}: {str(exc).splitlines()[0]}") from exc
