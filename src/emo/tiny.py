"""Tiny random stand-ins for the real weights (SD VAE, wav2vec2, a trained EMO), saved in the real layouts.

Used by `--preset tiny` smoke runs, the tiny training configs and the tests: they exercise the same loading
code as the real weights, on CPU in seconds. Outputs of a random model are noise-like, by design.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from emo.config import ModelConfig, tiny

# diffusers, transformers and emo.models are imported inside the functions that build each stand-in (seconds
# each): the generation pipeline imports this module also for models with no SD VAE or wav2vec2, and
# `emo bench evaluate` imports it for save_random_weights and measures its own memory.

# Audio feature shapes, (hidden states, width): the tiny one, or wav2vec2-base's (12 layers + embeddings, 768
# wide) so the tiny model holds and moves the audio of a real model (`emo bench generate --audio-shape base`).
AUDIO_SHAPES = {"tiny": (tiny().audio_layers, tiny().audio_feature_dim), "base": (13, 768)}


def tiny_config(audio_shape: str = "tiny") -> ModelConfig:
    """The tiny preset, with audio features of the named shape (see AUDIO_SHAPES)."""
    if audio_shape not in AUDIO_SHAPES:
        raise ValueError(f"audio shape {audio_shape!r}; choose one of {', '.join(AUDIO_SHAPES)}")
    layers, width = AUDIO_SHAPES[audio_shape]
    return replace(tiny(), audio_layers=layers, audio_feature_dim=width)


def tiny_vae(seed: int = 0):
    """An SD-shaped AutoencoderKL (8x downsampling, 4 latent channels) with ~0.3M parameters."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 32, 32),
        sample_size=64,
        scaling_factor=0.18215,
    ).eval()


def tiny_audio_model(seed: int = 0, audio_shape: str = "tiny"):
    """A wav2vec2-shaped model (the same 320x CNN stride: 50 Hz features) with 2 layers of width 32, or with
    wav2vec2-base's 12 layers of width 768 (``audio_shape="base"``; narrow feed-forwards keep it quick)."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    cfg = tiny_config(audio_shape)
    torch.manual_seed(seed)
    config = Wav2Vec2Config(
        hidden_size=cfg.audio_feature_dim,
        num_hidden_layers=cfg.audio_layers - 1,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="group",
        do_stable_layer_norm=False,
        vocab_size=32,
    )
    return Wav2Vec2Model(config).eval()


def wake(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Give the layers that start at zero (the new pathways' output projections) small random weights, so
    a random tiny model responds to every condition the way a trained one would (smoke runs, tests)."""
    from emo.models.attention import zero_initialised_parameters

    asleep = set(zero_initialised_parameters(model))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in asleep:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return model


def tiny_emo(seed: int = 0, awake: bool = True, audio_shape: str = "tiny"):
    from emo.models import EMO

    torch.manual_seed(seed)
    model = EMO.from_config(tiny_config(audio_shape))
    return wake(model, seed) if awake else model


def save_tiny_weights(directory: str | Path, seed: int = 0, awake: bool = True) -> Path:
    """Write a complete `--weights` directory: EMO components + vae/ + wav2vec2/ (all tiny, random)."""
    directory = Path(directory)
    tiny_emo(seed, awake).save_pretrained(directory)
    tiny_vae(seed).save_pretrained(directory / "vae", safe_serialization=True)
    tiny_audio_model(seed).save_pretrained(directory / "wav2vec2", safe_serialization=True)
    return directory


def random_state_dict(model: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> dict[str, torch.Tensor]:
    """``model``'s state dict with small random values: N(0, scale²) floats, running variances in [0.5, 1.5)
    (a normalisation needs them positive), integer entries (batch counters) as they are."""
    torch.manual_seed(seed)
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("running_var"):
            state[key] = torch.rand_like(value) + 0.5
        elif value.is_floating_point():
            state[key] = torch.randn_like(value) * scale
        else:
            state[key] = value
    return state


def save_random_weights(
    model: torch.nn.Module, path: str | Path, wrap: str | None = None, scale: float = 0.05
) -> Path:
    """Write `random_state_dict(model)` as a torch file, under the key ``wrap`` if given (as some public
    checkpoints nest their weights); returns the path."""
    state = random_state_dict(model, scale)
    torch.save({wrap: state} if wrap else state, path)
    return Path(path)
