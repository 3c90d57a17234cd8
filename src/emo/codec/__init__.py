"""Latent codecs: pixels <-> the latents the diffusion network works in (EMO.md §2 "VAE", §8).

One interface, :class:`LatentCodec`, serves generation, training and preprocessing, so a model trained in one
codec's latent space is used with that codec everywhere. Scaling and shifting into the network's latent space
happen inside the codec; callers see pixels in [-1, 1] on one side and model-ready latents on the other.

Implementations: :class:`~emo.codec.sd_vae.SDVAECodec` (SD's ``AutoencoderKL``, 4 channels, scaling 0.18215)
and the tiny autoencoders in :mod:`emo.codec.tiny_autoencoder` (TAESD, 4 channels; TAEF2, 32 channels).
"""

from __future__ import annotations

from pathlib import Path

from emo.codec.base import LatentCodec, to_uint8_frames
from emo.codec.sd_vae import SDVAECodec, load_vae

__all__ = ["LatentCodec", "SDVAECodec", "load_codec", "to_uint8_frames"]


def load_codec(path: str | Path) -> LatentCodec:
    """The codec saved at ``path``: a diffusers ``AutoencoderKL`` folder (the pipeline root or its ``vae/``)."""
    return SDVAECodec(load_vae(path))
