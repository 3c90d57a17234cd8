"""Tiny real-class models saved the way real weights are stored (shared by the model tests)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from emo.config import tiny

DATA = Path(__file__).parent / "data"


def tiny_diffusers_unet(seed: int = 0):
    """A diffusers UNet2DConditionModel with the tiny preset's shape and random (non-zero) weights."""
    from diffusers import UNet2DConditionModel

    cfg = tiny()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=cfg.layers_per_block,
        block_out_channels=cfg.block_out_channels,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=24,
        attention_head_dim=cfg.num_attention_heads,
        norm_num_groups=cfg.norm_num_groups,
    )
    # Random init leaves some layers at zero (e.g. none here) but biases small; perturb all for a real test.
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return unet.eval()


def tiny_motion_adapter(seed: int = 4):
    """A diffusers MotionAdapter (AnimateDiff's temporal modules) for the tiny preset, random (non-zero) weights."""
    from diffusers import MotionAdapter

    cfg = tiny()
    torch.manual_seed(seed)
    adapter = MotionAdapter(
        block_out_channels=cfg.block_out_channels,
        motion_layers_per_block=cfg.layers_per_block,
        motion_mid_block_layers_per_block=1,
        motion_num_attention_heads=cfg.temporal_heads,
        motion_norm_num_groups=cfg.norm_num_groups,
        motion_max_seq_length=32,
        use_motion_mid_block=True,
    )
    with torch.no_grad():  # its output projections start at zero: wake them for a real test
        for p in adapter.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return adapter


def diffusers_to_ldm_unet(state: dict[str, torch.Tensor], layers_per_block: int) -> dict[str, torch.Tensor]:
    """Rename a diffusers UNet state dict to the original LDM single-file layout (model.diffusion_model.*)."""
    resnet = {
        "norm1": "in_layers.0",
        "conv1": "in_layers.2",
        "time_emb_proj": "emb_layers.1",
        "norm2": "out_layers.0",
        "conv2": "out_layers.3",
        "conv_shortcut": "skip_connection",
    }
    n = layers_per_block
    out = {}
    for key, value in state.items():
        new = None
        if key.startswith("time_embedding.linear_1"):
            new = key.replace("time_embedding.linear_1", "time_embed.0")
        elif key.startswith("time_embedding.linear_2"):
            new = key.replace("time_embedding.linear_2", "time_embed.2")
        elif key.startswith("conv_in."):
            new = key.replace("conv_in", "input_blocks.0.0")
        elif key.startswith("conv_norm_out."):
            new = key.replace("conv_norm_out", "out.0")
        elif key.startswith("conv_out."):
            new = key.replace("conv_out", "out.2")
        elif m := re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.*)", key):
            b, i, layer, rest = m.groups()
            new = f"input_blocks.{1 + int(b) * (n + 1) + int(i)}.0.{resnet[layer]}.{rest}"
        elif m := re.match(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", key):
            b, i, rest = m.groups()
            new = f"input_blocks.{1 + int(b) * (n + 1) + int(i)}.1.{rest}"
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
            b, rest = m.groups()
            new = f"input_blocks.{1 + int(b) * (n + 1) + n}.0.op.{rest}"
        elif m := re.match(r"mid_block\.resnets\.(\d+)\.(\w+)\.(.*)", key):
            i, layer, rest = m.groups()
            new = f"middle_block.{2 * int(i)}.{resnet[layer]}.{rest}"
        elif m := re.match(r"mid_block\.attentions\.0\.(.*)", key):
            new = f"middle_block.1.{m.group(1)}"
        elif m := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.*)", key):
            b, i, layer, rest = m.groups()
            new = f"output_blocks.{int(b) * (n + 1) + int(i)}.0.{resnet[layer]}.{rest}"
        elif m := re.match(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", key):
            b, i, rest = m.groups()
            new = f"output_blocks.{int(b) * (n + 1) + int(i)}.1.{rest}"
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
            b, rest = m.groups()
            has_attn = any(k.startswith(f"up_blocks.{b}.attentions.") for k in state)
            new = f"output_blocks.{int(b) * (n + 1) + n}.{2 if has_attn else 1}.conv.{rest}"
        if new is None:
            raise KeyError(key)
        out["model.diffusion_model." + new] = value
    return out


def animatediff_layout(channels: dict[str, int] | None = None) -> dict[str, tuple[int, ...]]:
    """Key -> shape of mm_sd_v15_v2 from the written-down layout; `channels` overrides each site's width."""
    layout = json.loads((DATA / "mm_sd_v15_v2_layout.json").read_text())
    shapes = {}
    for site, width in layout["sites"].items():
        if channels is not None:
            if site not in channels:
                continue
            width = channels[site]
        for key, dims in layout["module_keys"].items():
            shapes[f"{site}.{key}"] = tuple(
                d if isinstance(d, int) else width * (int(d[:-1]) if d != "C" else 1) for d in dims
            )
    return shapes
