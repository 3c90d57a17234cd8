"""Temporal context windows for per-frame conditioning (EMO paper, Sec. 3.2 "Audio Layers").

The paper gives each generated frame the audio features of its neighbours too: "frame f gets the
concatenation of frames f−m … f+m" with m = 2 (EMO.md §2). The speed embedding uses the same window.
"""

from __future__ import annotations

import torch


def window(x: torch.Tensor, m: int = 2) -> torch.Tensor:
    """Stack each frame with its ±m neighbours: (F, ...) -> (F, 2m+1, ...).

    ``out[f, j] = x[clamp(f - m + j, 0, F - 1)]``, i.e. frames before the start and after the end repeat
    the first and last frame (replicate padding), so every frame gets a full window and ``out[:, m]`` is
    ``x`` itself.
    """
    if m < 0:
        raise ValueError(f"window half-width m must be >= 0, got {m}")
    num_frames = x.shape[0]
    if num_frames == 0:
        raise ValueError("window needs at least one frame")
    offsets = torch.arange(-m, m + 1, device=x.device)  # (2m+1,)
    index = (torch.arange(num_frames, device=x.device)[:, None] + offsets).clamp(
        0, num_frames - 1
    )  # (F, 2m+1)
    return x[index]  # (F, 2m+1, ...)
