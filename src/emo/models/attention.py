"""Attention layers with SD1.5 / diffusers parameter names (to_q, to_k, to_v, to_out.0, ff.net.*).

Names match diffusers' `Attention`/`FeedForward` so SD1.5 and AnimateDiff state dicts load by name.
All attention runs through `F.scaled_dot_product_attention` (flash / memory-efficient kernels where the
device has them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from emo.models.pathways import on_pathway


def zero_(module: nn.Module) -> nn.Module:
    """Zero a module's parameters: a new pathway then starts as an exact no-op (STYLE: absorb 4).

    The module is marked `starts_at_zero`, so what starts at zero is known without matching names
    (see `zero_initialised_parameters`)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    module.starts_at_zero = True
    return module


def zero_initialised_parameters(model: nn.Module) -> list[str]:
    """Names of the parameters `zero_` zeroed when ``model`` was built, in `named_parameters()` order."""
    marked = {
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules()
        if getattr(module, "starts_at_zero", False)
        for name, _ in module.named_parameters()
    }
    return [name for name, _ in model.named_parameters() if name in marked]


def tokens_to_image(tokens: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N, H*W, C) tokens -> (N, C, H, W) in the memory format of ``like`` (the block's input).

    The rearranged view alone has channels-last strides; left so, every later convolution would run
    channels-last against NCHW weights (a weight reorder per call: 2x slower on CPU, measured). With
    ``--channels-last`` the view already is the wanted layout and nothing is copied.
    """
    image = rearrange(tokens, "n (h w) c -> n c h w", h=like.shape[-2], w=like.shape[-1])
    channels_last = like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous()
    return image.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class Attention(nn.Module):
    """Multi-head attention; `context` defaults to the queries' own tokens (self-attention)."""

    def __init__(self, query_dim: int, heads: int, context_dim: int | None = None, qkv_bias: bool = False):
        super().__init__()
        if query_dim % heads:
            raise ValueError(f"query_dim {query_dim} is not divisible by heads {heads}")
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, query_dim, bias=qkv_bias)
        self.to_k = nn.Linear(context_dim, query_dim, bias=qkv_bias)
        self.to_v = nn.Linear(context_dim, query_dim, bias=qkv_bias)
        self.to_out = nn.ModuleList([nn.Linear(query_dim, query_dim), nn.Dropout(0.0)])

    def forward(
        self,
        x: torch.Tensor,  # (B, N, C) queries
        context: torch.Tensor | None = None,  # (B, M, Cc) keys/values; default x itself
        shared: torch.Tensor | None = None,  # (B / r, S, Cc) more keys/values, one set per r query rows
        repeats: int = 1,  # r
    ) -> torch.Tensor:
        """Attention of x to context, and to ``shared`` tokens when given: the keys/values of
        ``cat([context, shared.repeat_interleave(r)])``, with the shared ones projected once per group
        rather than once per row (the reference image is one per video, its frames are r rows)."""
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        if shared is not None:
            k = torch.cat([k, self.to_k(shared).repeat_interleave(repeats, dim=0)], dim=1)  # (B, M+S, C)
            v = torch.cat([v, self.to_v(shared).repeat_interleave(repeats, dim=0)], dim=1)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = rearrange(out, "b h n d -> b n (h d)")
        return self.to_out[1](self.to_out[0](out))


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward, `net.0.proj` / `net.2` as in diffusers."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class SpatialTransformerBlock(nn.Module):
    """SD1.5's BasicTransformerBlock with EMO's two changes.

    - attn1 is reference-attention: keys/values are the frame's own tokens concatenated with the
      ReferenceNet's tokens of the same block (the AnimateAnyone form; with no reference it is SD1.5's
      self-attention exactly).
    - SD1.5's text cross-attention (attn2/norm2) is gone; audio-attention (`audio_attn`) follows
      reference-attention (EMO paper Sec. 3.2: "after each ref-attention"): each frame's queries attend to
      that frame's audio tokens. Its output projection starts at zero.

    `name` is the block's path in the UNet; it keys the reference-feature dict shared by backbone and
    ReferenceNet.
    """

    def __init__(self, name: str, dim: int, heads: int, audio_dim: int | None):
        super().__init__()
        self.name = name
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads)
        if audio_dim:
            self.norm_audio = on_pathway("audio", nn.LayerNorm(dim))
            self.audio_attn = on_pathway("audio", Attention(dim, heads, context_dim=audio_dim))
            zero_(self.audio_attn.to_out[0])
        else:
            self.audio_attn = None
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(
        self,
        x: torch.Tensor,  # ((B F), N, C)
        num_frames: int,
        reference: dict[str, torch.Tensor] | None,
        audio_tokens: torch.Tensor | None,  # ((B F), K, Ca)
        collect: dict[str, torch.Tensor] | None,
    ) -> torch.Tensor:
        h = self.norm1(x)
        if collect is not None:
            collect[self.name] = h
        # Reference-attention: keys/values are the frame's tokens and its video's reference tokens
        # (B, N_ref, C), one reference per video, shared by its frames.
        ref = reference[self.name].to(h.dtype) if reference is not None else None
        x = x + self.attn1(h, shared=ref, repeats=num_frames)
        if self.audio_attn is not None and audio_tokens is not None:
            x = x + self.audio_attn(self.norm_audio(x), audio_tokens.to(x.dtype))
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """SD1.5's Transformer2DModel (conv proj_in/proj_out, one block) over each frame."""

    pathway = "spatial"  # all but the audio-attention layers inside

    def __init__(self, name: str, channels: int, heads: int, groups: int, audio_dim: int | None):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            [SpatialTransformerBlock(f"{name}.transformer_blocks.0", channels, heads, audio_dim)]
        )
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x, num_frames, reference, audio_tokens, collect):  # x: ((B F), C, H, W)
        residual = x
        h = rearrange(self.proj_in(self.norm(x)), "n c h w -> n (h w) c")
        for block in self.transformer_blocks:
            h = block(h, num_frames, reference, audio_tokens, collect)
        return self.proj_out(tokens_to_image(h, x)) + residual
