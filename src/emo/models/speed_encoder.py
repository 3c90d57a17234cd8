"""Speed encoder (EMO Sec. 3.3): head rotation speed -> per-frame speed tokens for the speed layers.

Each frame's speed and its +-m neighbours are bucket-encoded (`speed_buckets`) and mapped by an MLP to
one token per window slot (plus a learned slot embedding), so the speed layer's cross-attention has 2m+1
keys per frame rather than a single one (a single key would make the attention weights constant).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


def bucket_centres(num_buckets: int = 9, max_speed: float = 2.0) -> torch.Tensor:
    """Centres c_i, evenly spaced over [0, max_speed] (degrees per frame)."""
    if num_buckets < 2:
        raise ValueError(f"num_buckets must be >= 2, got {num_buckets}")
    return torch.linspace(0.0, max_speed, num_buckets)


def speed_buckets(speed: torch.Tensor, num_buckets: int = 9, max_speed: float = 2.0) -> torch.Tensor:
    """Encode speeds (any shape, degrees per frame) as (..., num_buckets) values in (-1, 1).

    The paper's d buckets, s_i = tanh(3 (w - c_i) / r_i): each says softly "is w above or below centre
    c_i". The paper does not give c_i or r_i; ours: centres evenly spaced over [0, max_speed] and each
    radius equal to the spacing (EMO.md §2).
    """
    centres = bucket_centres(num_buckets, max_speed).to(device=speed.device, dtype=torch.float32)
    radius = max_speed / (num_buckets - 1)
    return torch.tanh(3.0 * (speed.float().unsqueeze(-1) - centres) / radius)


class SpeedEncoder(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(
        self,
        num_buckets: int = 9,  # d (EMO paper)
        max_speed: float = 2.0,  # bucket centres spread over [0, max_speed] degrees/frame
        window: int = 5,  # 2m+1
        hidden_dim: int = 256,
        token_dim: int = 768,
    ):
        super().__init__()
        self.linear_1 = nn.Linear(num_buckets, hidden_dim)
        self.linear_2 = nn.Linear(hidden_dim, token_dim)
        self.slot_embedding = nn.Parameter(torch.zeros(window, token_dim))
        self.norm = nn.LayerNorm(token_dim)

    def forward(self, speed: torch.Tensor) -> torch.Tensor:
        """speed (N, W) degrees/frame, windowed per frame -> tokens (N, W, token_dim)."""
        if speed.shape[-1] != self.config.window:
            raise ValueError(f"speed window of {speed.shape[-1]}, expected {self.config.window}")
        buckets = speed_buckets(speed, self.config.num_buckets, self.config.max_speed)
        x = self.linear_2(F.silu(self.linear_1(buckets.to(self.linear_1.weight.dtype))))
        return self.norm(x + self.slot_embedding)
