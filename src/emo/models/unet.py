"""One UNet class for EMO's backbone and its ReferenceNet (EMO Sec. 3.2, EMO.md §2).

SD1.5-shaped: parameter names follow diffusers' `UNet2DConditionModel` (spatial layers) and AnimateDiff's
motion modules (`*.motion_modules.*`), so real weights load by name. Flags in the config turn the video
parts on: temporal modules (AnimateDiff v2 sites), audio-attention, speed layers. With all of them off and
no output head it is the ReferenceNet.

Video is kept as `((B F), C, H, W)` everywhere except inside temporal modules. Frame and motion-frame
counts come from the inputs; latents need not be square.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.utils.checkpoint import checkpoint

from emo.models.attention import SpatialTransformer
from emo.models.pathways import PATHWAYS, on_pathway, parameter_pathways
from emo.models.temporal_module import TemporalModule


@dataclass
class FeatureCollector:
    """Filled by a ReferenceNet pass: the per-call return channel for reference and motion features."""

    spatial: dict[str, torch.Tensor] = field(default_factory=dict)  # block name -> ((B), N, C) attn1 input
    motion: dict[str, torch.Tensor] = field(default_factory=dict)  # temporal site -> ((B), C, H, W)


@dataclass(frozen=True)
class FrameInputs:
    """What every block may read besides the hidden states."""

    num_frames: int  # F: frames per video in the batch
    reference: dict[str, torch.Tensor] | None = None  # block name -> (B, N_ref, C)
    motion: dict[str, torch.Tensor] | None = None  # site name -> ((B n), C, H, W)
    audio_tokens: torch.Tensor | None = None  # ((B F), K, Ca)
    speed_tokens: torch.Tensor | None = None  # ((B F), S, Cs)
    collect: FeatureCollector | None = None


def timestep_embedding(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """SD1.5's sinusoidal embedding (diffusers Timesteps, flip_sin_to_cos=True, shift 0)."""
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    args = timesteps.float()[:, None] * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedding(nn.Module):
    pathway = "spatial"

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class ResnetBlock(nn.Module):
    pathway = "spatial"

    def __init__(self, in_channels: int, out_channels: int, temb_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=1e-5)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_dim, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=1e-5)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Downsample(nn.Module):
    pathway = "spatial"

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    pathway = "spatial"

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, size: tuple[int, int]):
        # Upsample to the skip's size, not blindly x2, so odd latent sizes round-trip.
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class _Block(nn.Module):
    """Shared plumbing: a stack of (resnet, [attention], [temporal site]) layers."""

    def _build_layers(
        self, name, in_channels, out_channels, num_layers, cfg, temb_dim, has_attention, skip_channels=None
    ):
        self.name = name
        self.resnets = nn.ModuleList()
        attentions, motion_modules = [], []
        for i in range(num_layers):
            res_in = in_channels if i == 0 else out_channels
            if skip_channels is not None:
                res_in += skip_channels[i]
            self.resnets.append(ResnetBlock(res_in, out_channels, temb_dim, cfg.norm_num_groups))
            if has_attention:
                attentions.append(
                    SpatialTransformer(
                        f"{name}.attentions.{i}",
                        out_channels,
                        cfg.num_attention_heads,
                        cfg.norm_num_groups,
                        cfg.audio_dim,
                    )
                )
            if cfg.temporal:
                motion_modules.append(
                    TemporalModule(
                        out_channels,
                        cfg.temporal_heads,
                        cfg.norm_num_groups,
                        cfg.temporal_max_len,
                        cfg.speed_dim,
                    )
                )
        self.attentions = nn.ModuleList(attentions) if has_attention else None
        self.motion_modules = nn.ModuleList(motion_modules) if cfg.temporal else None

    def _layer(self, i: int, x: torch.Tensor, temb: torch.Tensor, inputs: FrameInputs) -> torch.Tensor:
        x = self.resnets[i](x, temb)
        if self.attentions is not None:
            x = self.attentions[i](
                x,
                inputs.num_frames,
                inputs.reference,
                inputs.audio_tokens,
                inputs.collect and inputs.collect.spatial,
            )
        return self._site(f"{self.name}.motion_modules.{i}", i, x, inputs)

    def _site(self, site: str, i: int, x: torch.Tensor, inputs: FrameInputs) -> torch.Tensor:
        """A temporal-module site: the backbone runs its module there, the ReferenceNet records features."""
        if inputs.collect is not None:
            inputs.collect.motion[site] = x
        if self.motion_modules is not None:
            motion = inputs.motion[site] if inputs.motion is not None else None
            x = self.motion_modules[i](x, inputs.num_frames, motion, inputs.speed_tokens)
        return x


class DownBlock(_Block):
    def __init__(self, name, in_channels, out_channels, cfg, temb_dim, has_attention, add_downsample):
        super().__init__()
        self._build_layers(
            name, in_channels, out_channels, cfg.layers_per_block, cfg, temb_dim, has_attention
        )
        self.downsamplers = nn.ModuleList([Downsample(out_channels)]) if add_downsample else None

    def forward(self, x, temb, inputs: FrameInputs):
        skips = []
        for i in range(len(self.resnets)):
            x = self._layer(i, x, temb, inputs)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class MidBlock(_Block):
    def __init__(self, name, channels, cfg, temb_dim):
        super().__init__()
        self.name = name
        groups = cfg.norm_num_groups
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, temb_dim, groups) for _ in range(2)])
        self.attentions = nn.ModuleList(
            [
                SpatialTransformer(
                    f"{name}.attentions.0", channels, cfg.num_attention_heads, groups, cfg.audio_dim
                )
            ]
        )
        self.motion_modules = (
            nn.ModuleList(
                [TemporalModule(channels, cfg.temporal_heads, groups, cfg.temporal_max_len, cfg.speed_dim)]
            )
            if cfg.temporal
            else None
        )

    def forward(self, x, temb, inputs: FrameInputs):
        x = self.resnets[0](x, temb)
        x = self.attentions[0](
            x,
            inputs.num_frames,
            inputs.reference,
            inputs.audio_tokens,
            inputs.collect and inputs.collect.spatial,
        )
        x = self._site(f"{self.name}.motion_modules.0", 0, x, inputs)  # AnimateDiff v2's mid-block module
        return self.resnets[1](x, temb)


class UpBlock(_Block):
    def __init__(
        self, name, prev_channels, out_channels, skip_channels, cfg, temb_dim, has_attention, add_upsample
    ):
        super().__init__()
        self._build_layers(
            name,
            prev_channels,
            out_channels,
            cfg.layers_per_block + 1,
            cfg,
            temb_dim,
            has_attention,
            skip_channels=skip_channels,
        )
        self.upsamplers = nn.ModuleList([Upsample(out_channels)]) if add_upsample else None

    def forward(self, x, temb, inputs: FrameInputs, skips: list[torch.Tensor], upsample_size):
        # The deepest skip is consumed first; `skips` is not mutated, so a checkpointed re-run sees it whole.
        for i, skip in enumerate(reversed(skips)):
            x = torch.cat([x, skip], dim=1)
            x = self._layer(i, x, temb, inputs)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x


class EMOUNet(ModelMixin, ConfigMixin):
    """SD1.5-shaped UNet serving as EMO's backbone (video parts on) or ReferenceNet (all off).

    forward() denoises; `reference_features()` runs it as the ReferenceNet and returns what the backbone
    reads (as a return value: no state is stored on the modules).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,  # latent channels
        out_channels: int = 4,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        attention_blocks: tuple[bool, ...] = (True, True, True, False),  # down blocks with attention
        num_attention_heads: int = 8,
        norm_num_groups: int = 32,
        audio_dim: int | None = 768,  # audio-token width; None = no audio-attention (ReferenceNet)
        temporal: bool = True,  # AnimateDiff v2 temporal modules at every site
        temporal_heads: int = 8,
        temporal_max_len: int = 32,  # motion + current frames per clip, at most (AnimateDiff v2: 32)
        speed_dim: int | None = 768,  # speed-token width; None = no speed layers (needs temporal)
        output_head: bool = True,  # conv_norm_out/conv_out; the ReferenceNet has none (it returns features)
    ):
        super().__init__()
        if len(attention_blocks) != len(block_out_channels):
            raise ValueError("attention_blocks needs one flag per entry of block_out_channels")
        if speed_dim and not temporal:
            raise ValueError("speed layers live inside temporal modules: set temporal=True or speed_dim=None")
        if any(c % norm_num_groups for c in block_out_channels):
            raise ValueError(
                f"every block_out_channels entry must be divisible by norm_num_groups={norm_num_groups}"
            )
        cfg = self.config
        self.gradient_checkpointing = False
        channels = list(block_out_channels)
        temb_dim = channels[0] * 4

        self.conv_in = on_pathway("spatial", nn.Conv2d(in_channels, channels[0], 3, padding=1))
        self.time_embedding = TimestepEmbedding(channels[0], temb_dim)

        self.down_blocks = nn.ModuleList()
        skip_channels = [channels[0]]
        for i, out_ch in enumerate(channels):
            final = i == len(channels) - 1
            in_ch = channels[max(i - 1, 0)]
            self.down_blocks.append(
                DownBlock(
                    f"down_blocks.{i}",
                    in_ch,
                    out_ch,
                    cfg,
                    temb_dim,
                    attention_blocks[i],
                    add_downsample=not final,
                )
            )
            skip_channels += [out_ch] * layers_per_block + ([] if final else [out_ch])

        self.mid_block = MidBlock("mid_block", channels[-1], cfg, temb_dim)

        self.up_blocks = nn.ModuleList()
        reversed_channels = channels[::-1]
        reversed_attention = list(attention_blocks)[::-1]
        prev = channels[-1]
        for i, out_ch in enumerate(reversed_channels):
            final = i == len(channels) - 1
            skips = [skip_channels.pop() for _ in range(layers_per_block + 1)]
            self.up_blocks.append(
                UpBlock(
                    f"up_blocks.{i}",
                    prev,
                    out_ch,
                    skips,
                    cfg,
                    temb_dim,
                    reversed_attention[i],
                    add_upsample=not final,
                )
            )
            prev = out_ch

        if output_head:
            self.conv_norm_out = on_pathway("spatial", nn.GroupNorm(norm_num_groups, channels[0], eps=1e-5))
            self.conv_out = on_pathway("spatial", nn.Conv2d(channels[0], out_channels, 3, padding=1))

    # -- parameter groups (what a training stage can name) -------------------------------------------
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by the pathway their modules declare (emo.models.pathways); empty groups omitted."""
        pathways = parameter_pathways(self)
        groups: dict[str, list[nn.Parameter]] = {name: [] for name in PATHWAYS}
        for name, param in self.named_parameters():
            groups[pathways[name]].append(param)
        return {k: v for k, v in groups.items() if v}

    # -- forward ---------------------------------------------------------------------------------------
    def _run(self, block, *args, **kwargs):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False, **kwargs)
        return block(*args, **kwargs)

    def _unet(self, sample, timestep, inputs: FrameInputs, added_features=None):
        batch = sample.shape[0]
        timestep = torch.as_tensor(timestep, device=sample.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(batch)
        elif timestep.shape[0] != batch:  # one timestep per video -> one per frame
            timestep = timestep.repeat_interleave(inputs.num_frames)
        temb = self.time_embedding(
            timestep_embedding(timestep, self.config.block_out_channels[0]).to(sample.dtype)
        )

        x = self.conv_in(sample)
        if added_features is not None:
            x = x + added_features
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = self._run(block, x, temb, inputs)
            skips += block_skips
        x = self._run(self.mid_block, x, temb, inputs)
        for block in self.up_blocks:
            block_skips = [skips.pop() for _ in range(len(block.resnets))][::-1]
            upsample_size = skips[-1].shape[-2:] if skips else None
            x = self._run(block, x, temb, inputs, block_skips, upsample_size)
        return x

    def forward(
        self,
        sample: torch.Tensor,  # ((B F), C, H, W) noisy latents
        timestep: torch.Tensor | int,  # scalar, (B,) or ((B F),)
        num_frames: int = 1,
        reference: dict[str, torch.Tensor] | None = None,  # from reference_features().spatial
        motion: dict[str, torch.Tensor] | None = None,  # from reference_features().motion
        audio_tokens: torch.Tensor | None = None,  # ((B F), K, Ca)
        speed_tokens: torch.Tensor | None = None,  # ((B F), S, Cs)
        face_features: torch.Tensor | None = None,  # (B, C0, H, W) Face Locator output, added after conv_in
    ) -> torch.Tensor:
        if not self.config.output_head:
            raise RuntimeError("this UNet is a ReferenceNet (output_head=False): call reference_features()")
        if sample.shape[0] % num_frames:
            raise ValueError(f"batch {sample.shape[0]} is not a multiple of num_frames={num_frames}")
        if face_features is not None:
            face_features = face_features.repeat_interleave(num_frames, dim=0)
        inputs = FrameInputs(num_frames, reference, motion, audio_tokens, speed_tokens)
        x = self._unet(sample, timestep, inputs, face_features)
        return self.conv_out(F.silu(self.conv_norm_out(x)))

    def reference_features(self, latents: torch.Tensor, timestep: int = 0) -> FeatureCollector:
        """Run as ReferenceNet on clean latents ((B), C, H, W) at timestep 0 (EMO.md §2) and collect
        every spatial block's attention input and every temporal site's hidden states."""
        collect = FeatureCollector()
        self._unet(latents, timestep, FrameInputs(1, collect=collect))
        return collect
