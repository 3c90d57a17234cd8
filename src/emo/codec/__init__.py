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
from emo.codec.tiny_autoencoder import CONFIG_NAME, TinyAutoencoderCodec, load_codec_folder, load_taef2

__all__ = ["TAEF2", "LatentCodec", "SDVAECodec", "TinyAutoencoderCodec", "load_codec", "to_uint8_frames"]

TAEF2 = "taef2"  # the spec of the shipped TAEF2 codec


def load_codec(spec: str | Path) -> LatentCodec:
    """The codec a spec names: ``taef2`` (shipped), a tiny-autoencoder folder (``codec.json`` +
    encoder/decoder weights, as :meth:`TinyAutoencoderCodec.save` writes) or a diffusers ``AutoencoderKL``
    folder (the pipeline root or its ``vae/``)."""
    if str(spec) == TAEF2:
        return load_taef2()
    if (Path(spec) / CONFIG_NAME).is_file():
        return load_codec_folder(spec)
    return SDVAECodec(load_vae(spec))
