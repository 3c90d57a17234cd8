"""Head rotation speed -> bucket encoding (EMO paper, Sec. 3.3 "Speed Layers").

The paper encodes a speed w with d buckets, s_i = tanh(3 (w - c_i) / r_i), so each bucket answers
"is w above or below centre c_i" softly. The paper does not give c_i or r_i; ours: centres evenly
spaced over [0, max_speed] and each radius equal to the spacing (EMO.md §2).
"""

from __future__ import annotations

import torch


def bucket_centres(num_buckets: int = 9, max_speed: float = 2.0) -> torch.Tensor:
    """Centres c_i, evenly spaced over [0, max_speed] (degrees per frame)."""
    if num_buckets < 2:
        raise ValueError(f"num_buckets must be >= 2, got {num_buckets}")
    return torch.linspace(0.0, max_speed, num_buckets)


def speed_buckets(speed: torch.Tensor, num_buckets: int = 9, max_speed: float = 2.0) -> torch.Tensor:
    """Encode speeds (any shape, degrees per frame) as (..., num_buckets) values in (-1, 1)."""
    centres = bucket_centres(num_buckets, max_speed).to(device=speed.device, dtype=torch.float32)
    radius = max_speed / (num_buckets - 1)
    return torch.tanh(3.0 * (speed.float().unsqueeze(-1) - centres) / radius)
