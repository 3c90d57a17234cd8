"""Audio projector: a window of per-frame wav2vec2 features -> K audio tokens per frame (EMO Sec. 3.2).

Frame f's input is the features of frames f-m..f+m (m=2, EMO paper), every wav2vec2 layer (EMO.md §2:
"hidden states of all layers stacked"). The projector (ours, shaped like Hallo's) flattens the window,
maps it through an MLP to K tokens of the audio-attention width, and normalises them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from einops import rearrange
from torch import nn


class AudioProjector(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(
        self,
        window: int = 5,  # 2m+1 frames of context per video frame
        num_layers: int = 13,  # wav2vec2 hidden states per frame (base: 12 layers + the input embedding)
        feature_dim: int = 768,  # wav2vec2 hidden size
        hidden_dim: int = 512,
        num_tokens: int = 32,  # K audio tokens per frame
        token_dim: int = 768,  # width the backbone's audio-attention reads
    ):
        super().__init__()
        self.proj1 = nn.Linear(window * num_layers * feature_dim, hidden_dim)
        self.proj2 = nn.Linear(hidden_dim, hidden_dim)
        self.proj3 = nn.Linear(hidden_dim, num_tokens * token_dim)
        self.norm = nn.LayerNorm(token_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (N, W, L, D) -> tokens (N, K, token_dim); N is (batch x frames)."""
        cfg = self.config
        expected = (cfg.window, cfg.num_layers, cfg.feature_dim)
        if tuple(features.shape[1:]) != expected:
            raise ValueError(
                f"audio features of shape {tuple(features.shape[1:])} per frame, expected {expected} "
                "(window, wav2vec2 layers, hidden size): is the audio encoder the one this model "
                "was trained with?"
            )
        x = rearrange(features.to(self.proj1.weight.dtype), "n w l d -> n (w l d)")
        x = F.silu(self.proj1(x))
        x = F.silu(self.proj2(x))
        x = rearrange(self.proj3(x), "n (k c) -> n k c", k=cfg.num_tokens)
        return self.norm(x)
