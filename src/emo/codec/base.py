"""The latent-codec interface (see :mod:`emo.codec`)."""

from __future__ import annotations

import hashlib
import json

import torch
from torch import nn


class LatentCodec(nn.Module):
    """Frozen image autoencoder: ``encode`` (N, 3, H, W) pixels in [-1, 1] -> (N, C, H/s, W/s) latents,
    ``decode`` the way back. ``s`` is :attr:`downscale` (8 for every codec here)."""

    latent_channels: int
    downscale: int = 8

    def encode(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> (N, C, h, w) model-space latents. A stochastic codec (the SD VAE)
        returns its posterior mean unless ``generator`` is given, which draws a sample from it (training
        targets, as in SD training); a deterministic codec ignores ``generator``."""
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) model-space latents -> (N, 3, H, W) pixels, nominally in [-1, 1] (not clamped)."""
        raise NotImplementedError

    def describe(self) -> dict:
        """What a checkpoint records about the codec it was trained with (kind, channels, ...)."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """SHA-256 of :meth:`describe` and every weight: latents cached with one codec are refused by
        another (a dataset's latents must be the ones the model's codec would make)."""
        digest = hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode())
        for name, tensor in sorted(self.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        return f"sha256:{digest.hexdigest()}"


def to_uint8_frames(pixels: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) pixels in [-1, 1] -> (N, 3, H, W) uint8, clamped and rounded (what a video frame holds)."""
    return ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
