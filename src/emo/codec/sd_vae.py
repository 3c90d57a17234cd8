"""SD's ``AutoencoderKL`` as a :class:`~emo.codec.LatentCodec` (EMO.md §2: 4 channels, scaling 0.18215)."""

from __future__ import annotations

import torch

from emo.codec.base import LatentCodec
from emo.models.loading import load_vae

__all__ = ["SDVAECodec", "load_vae"]


class SDVAECodec(LatentCodec):
    """Latents are the VAE posterior's (mean or sample) times ``scaling_factor`` (minus ``shift_factor``
    first, for VAEs that have one), as SD's UNet was trained on them."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae
        self.latent_channels = vae.config.latent_channels
        self.scaling = float(vae.config.scaling_factor)
        self.shift = float(getattr(vae.config, "shift_factor", None) or 0.0)

    def encode(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        dist = self.vae.encode(pixels).latent_dist
        latents = dist.mean
        if generator is not None:  # a posterior sample (training targets, as in SD training)
            noise = torch.randn(dist.mean.shape, generator=generator).to(dist.mean.device, dist.mean.dtype)
            latents = dist.mean + dist.std * noise
        if self.shift:
            latents = latents - self.shift
        return latents * self.scaling

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        latents = latents / self.scaling
        if self.shift:
            latents = latents + self.shift
        return self.vae.decode(latents).sample

    def describe(self) -> dict:
        return {
            "kind": "sd_vae",
            "latent_channels": self.latent_channels,
            "scaling": self.scaling,
            "shift": self.shift,
        }
