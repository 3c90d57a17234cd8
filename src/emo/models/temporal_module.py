"""AnimateDiff-v2 temporal modules, extended with EMO's motion frames and speed layers.

Parameter names follow AnimateDiff's `mm_sd_v15_v2.ckpt` (`temporal_transformer.transformer_blocks.0.
attention_blocks.{0,1}...`) so those weights load by name. EMO's additions:

- Motion frames (EMO Sec. 3.2): the ReferenceNet's features of the previous clip's last n frames, at this
  same site, are prepended along the frame axis; temporal attention runs over n+f frames and only the f
  current frames continue.
- Speed layers (EMO Sec. 3.3): cross-attention from each current frame's tokens to that frame's speed
  tokens, inside the temporal block; output projection starts at zero.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

from emo.models.attention import Attention, FeedForward, tokens_to_image, zero_
from emo.models.pathways import on_pathway


def sinusoidal_positions(max_len: int, dim: int) -> torch.Tensor:
    """AnimateDiff's PositionalEncoding table, (1, max_len, dim)."""
    position = torch.arange(max_len).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
    pe = torch.zeros(1, max_len, dim)
    pe[0, :, 0::2] = torch.sin(position * div_term)
    pe[0, :, 1::2] = torch.cos(position * div_term)
    return pe


class PositionalEncoding(nn.Module):
    def __init__(self, dim: int, max_len: int):
        super().__init__()
        # Persistent so the key `pos_encoder.pe` of AnimateDiff checkpoints has a home; the values are the
        # same deterministic table either way.
        self.register_buffer("pe", sinusoidal_positions(max_len, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, frames, C)
        frames = x.shape[1]
        if frames > self.pe.shape[1]:
            raise ValueError(
                f"{frames} frames exceed the temporal position table ({self.pe.shape[1]}); "
                "raise temporal_max_len in the model config"
            )
        return x + self.pe[:, :frames].to(x.dtype)


class TemporalAttention(Attention):
    """Self-attention along the frame axis of each spatial position (AnimateDiff's VersatileAttention)."""

    def __init__(self, dim: int, heads: int, max_len: int):
        super().__init__(dim, heads)
        self.pos_encoder = PositionalEncoding(dim, max_len)

    def forward(self, x: torch.Tensor, num_frames: int, num_queries: int | None = None) -> torch.Tensor:
        """x: ((B T), HW, C) -> ((B Q), HW, C): the last Q = ``num_queries`` frames (default all T) attend
        to all T frames. Fewer queries give exactly those frames' rows of the full result."""
        tokens = x.shape[1]
        x = self.pos_encoder(rearrange(x, "(b t) d c -> (b d) t c", t=num_frames))  # ((B HW), T, C)
        queries = x if num_queries in (None, num_frames) else x[:, num_frames - num_queries :]
        out = super().forward(queries, x)
        return rearrange(out, "(b d) q c -> (b q) d c", d=tokens)


class TemporalTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, max_len: int, speed_dim: int | None):
        super().__init__()
        self.attention_blocks = nn.ModuleList([TemporalAttention(dim, heads, max_len) for _ in range(2)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(2)])
        if speed_dim:
            self.speed_norm = on_pathway("speed", nn.LayerNorm(dim))
            self.speed_attn = on_pathway("speed", Attention(dim, heads, context_dim=speed_dim))
            zero_(self.speed_attn.to_out[0])
        else:
            self.speed_attn = None
        self.ff = FeedForward(dim)
        self.ff_norm = nn.LayerNorm(dim)

    def forward(
        self,
        x: torch.Tensor,  # ((B T), HW, C), T = motion + current frames
        num_frames: int,  # T
        num_current: int,  # f: the trailing frames that are being generated
        speed_tokens: torch.Tensor | None,  # ((B f), S, Cs)
    ) -> torch.Tensor:
        """((B T), HW, C) -> ((B f), HW, C): the motion frames end here (EMO: "only the f current frames
        continue"), so after serving as keys and values of the last attention they skip its queries, the
        speed layer and the feed-forward (a quarter of the work at n=4, f=12), with the current frames'
        result unchanged."""
        *earlier, (attention, norm) = zip(self.attention_blocks, self.norms)
        for earlier_attention, earlier_norm in earlier:
            x = x + earlier_attention(earlier_norm(x), num_frames)
        current = rearrange(x, "(b t) d c -> b t d c", t=num_frames)[:, num_frames - num_current :]
        x = rearrange(current, "b f d c -> (b f) d c") + attention(
            norm(x), num_frames, num_current
        )  # ((B f), HW, C)
        if self.speed_attn is not None and speed_tokens is not None:
            # Only the current frames have a speed, and only they are left.
            x = x + self.speed_attn(self.speed_norm(x), speed_tokens.to(x.dtype))
        return x + self.ff(self.ff_norm(x))


class TemporalTransformer(nn.Module):
    def __init__(self, channels: int, heads: int, groups: int, max_len: int, speed_dim: int | None):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            [TemporalTransformerBlock(channels, heads, max_len, speed_dim)]
        )
        self.proj_out = zero_(nn.Linear(channels, channels))  # AnimateDiff's zero_initialize

    def forward(self, x, num_frames, num_current, speed_tokens):
        """((B T), C, H, W) with T = motion + current frames -> ((B f), C, H, W), the current frames."""
        batch = x.shape[0] // num_frames
        residual = rearrange(x, "(b t) c h w -> b t c h w", b=batch)[:, num_frames - num_current :]
        residual = rearrange(residual, "b f c h w -> (b f) c h w")
        h = rearrange(self.norm(x), "n c h w -> n (h w) c")
        h = self.proj_in(h)
        (block,) = self.transformer_blocks  # one, as in AnimateDiff v2 (a list for its parameter names)
        h = block(h, num_frames, num_current, speed_tokens)  # ((B f), HW, C)
        return tokens_to_image(self.proj_out(h), x) + residual


class TemporalModule(nn.Module):
    """One temporal-module site (AnimateDiff's VanillaTemporalModule)."""

    pathway = "temporal"  # all but the speed layers inside

    def __init__(self, channels: int, heads: int, groups: int, max_len: int, speed_dim: int | None):
        super().__init__()
        self.temporal_transformer = TemporalTransformer(channels, heads, groups, max_len, speed_dim)

    def forward(
        self,
        x: torch.Tensor,  # ((B F), C, H, W)
        num_frames: int,  # F
        motion: torch.Tensor | None = None,  # ((B n), C, H, W) ReferenceNet features of the motion frames
        speed_tokens: torch.Tensor | None = None,  # ((B F), S, Cs)
    ) -> torch.Tensor:
        if motion is None:
            return self.temporal_transformer(x, num_frames, num_frames, speed_tokens)
        batch = x.shape[0] // num_frames
        num_motion = motion.shape[0] // batch
        frames = torch.cat(
            [
                rearrange(motion.to(x.dtype), "(b n) c h w -> b n c h w", b=batch),
                rearrange(x, "(b f) c h w -> b f c h w", b=batch),
            ],
            dim=1,
        )  # (B, n+F, C, H, W)
        return self.temporal_transformer(  # ((B F), C, H, W): only the current frames continue
            rearrange(frames, "b t c h w -> (b t) c h w"), num_motion + num_frames, num_frames, speed_tokens
        )
