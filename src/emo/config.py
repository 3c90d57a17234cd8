"""Model presets: the full-size `sd15` network, the `small` one trained here (EMO.md §8) and a `tiny` one for
CPU tests and smoke runs.

A preset is a function returning a `ModelConfig`; every field is read when the network is built.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from emo.errors import EmoError

DENOISED = ("frames", "residual")  # what the network denoises (ModelConfig.denoised)
PREDICTIONS = ("epsilon", "v_prediction")  # what it outputs (ModelConfig.prediction; why: emo.sampling)


@dataclass(frozen=True)
class ModelConfig:
    # UNet (backbone and ReferenceNet share these; SD1.5 values by default)
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    attention_blocks: tuple[bool, ...] = (True, True, True, False)  # down blocks with spatial attention
    num_attention_heads: int = 8
    norm_num_groups: int = 32
    latent_channels: int = 4
    # temporal modules (AnimateDiff v2)
    temporal_heads: int = 8
    temporal_max_len: int = 32  # motion + current frames per clip, at most
    # audio: wav2vec2 features -> projector -> audio-attention
    audio_layers: int = 13  # hidden states of the audio encoder (wav2vec2-base: 12 layers + embeddings)
    audio_feature_dim: int = 768  # wav2vec2 hidden size
    audio_window: int = 2  # m: frame f sees the audio (and head speeds) of frames f-m..f+m (EMO paper)
    audio_tokens: int = 32  # K tokens per frame
    audio_hidden: int = 512  # projector MLP width
    token_dim: int = 768  # width of audio and speed tokens (the cross-attention context width)
    # speed encoder
    speed_buckets: int = 9  # d (EMO paper)
    max_speed: float = 2.0  # bucket centres over [0, max_speed] degrees/frame
    speed_hidden: int = 256
    # face locator
    face_locator_channels: tuple[int, ...] = (16, 32, 64, 128)
    # what the network denoises: "frames" (the paper) or "residual", each frame's latent minus the clean
    # reference latent, times `residual_scale` (to unit variance). An under-trained residual model falls back
    # to the portrait instead of noise, and its loss sits on what moves: mouth, eyes, head (EMO.md §8).
    denoised: str = "frames"
    residual_scale: float = 1.0
    # what the network outputs: "epsilon" (the paper) or "v_prediction" (why: emo.sampling)
    prediction: str = "epsilon"

    def to_dict(self) -> dict:
        return asdict(self)


def sd15() -> ModelConfig:
    """The full-size EMO network around SD1.5 and wav2vec2-base (EMO.md §2)."""
    return ModelConfig()


def tiny() -> ModelConfig:
    """A few-million-parameter network with the same structure, for CPU tests and smoke runs."""
    return ModelConfig(
        block_out_channels=(32, 64),
        layers_per_block=1,
        attention_blocks=(True, False),
        num_attention_heads=4,
        norm_num_groups=8,
        temporal_heads=4,
        audio_layers=3,
        audio_feature_dim=32,
        audio_tokens=4,
        audio_hidden=64,
        token_dim=64,
        speed_hidden=32,
        face_locator_channels=(8, 16, 16, 32),
    )


def small() -> ModelConfig:
    """The model trained on these machines (EMO.md §8): 128² frames as TAEF2's 32-channel 16² latents, log-mel
    audio (4 stacked 10 ms frames x 80 bins per video frame), one layer per block, attention at every level.
    Widths 32/64/128 so that the whole model fits the 40 MB a shipped model may take in fp16 (64/128/256
    learned faster per minute in the pilot, docs/training.md, but is 43 M parameters: 82 MB)."""
    return ModelConfig(
        block_out_channels=(32, 64, 128),
        layers_per_block=1,
        attention_blocks=(True, True, True),
        num_attention_heads=4,
        norm_num_groups=32,
        latent_channels=32,
        temporal_heads=4,
        audio_layers=4,
        audio_feature_dim=80,
        audio_tokens=8,
        audio_hidden=256,
        token_dim=256,
        speed_hidden=64,
        # Residual: a network this small, trained for an hour, cannot turn pure noise into a face; denoising
        # the difference from the portrait, it falls back to the portrait. Two frames of one clip differ by
        # 0.48 rms in TAEF2 latents (the latents themselves: 1.0), hence the scale 2.
        denoised="residual",
        residual_scale=2.0,
        # v, not ε: a 32-wide first level cannot copy 32 channels of noise through the UNet, which ε needs at
        # high noise (the first residual run: ε-MSE 0.57 at t = 999, where passing the input through gives 0.005)
        prediction="v_prediction",
    )


PRESETS = {"sd15": sd15, "small": small, "tiny": tiny}


def preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise EmoError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
