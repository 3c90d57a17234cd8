"""Temporal context windows for per-frame conditioning (EMO paper, Sec. 3.2 "Audio Layers").

The paper gives each generated frame the audio features of its neighbours too: "frame f gets the
concatenation of frames f−m … f+m" with m = 2 (EMO.md §2). The speed embedding uses the same window.
"""

from __future__ import annotations

import torch


def window_index(frames: torch.Tensor, num_frames: int, m: int = 2) -> torch.Tensor:
    """Which frames feed each window: (K,) frame numbers -> (K, 2m+1), ``[k, j] = clamp(frames[k] - m + j)``
    into ``0 .. num_frames - 1`` (replicate padding at both ends of the track)."""
    if m < 0:
        raise ValueError(f"window half-width m must be >= 0, got {m}")
    if num_frames == 0:
        raise ValueError("window needs at least one frame")
    offsets = torch.arange(-m, m + 1, device=frames.device)  # (2m+1,)
    return (frames[:, None] + offsets).clamp(0, num_frames - 1)  # (K, 2m+1)


def window(x: torch.Tensor, m: int = 2, frames: torch.Tensor | None = None) -> torch.Tensor:
    """Stack each frame with its ±m neighbours: (F, ...) -> (F, 2m+1, ...).

    ``out[f, j] = x[clamp(f - m + j, 0, F - 1)]``, i.e. frames before the start and after the end repeat
    the first and last frame (replicate padding), so every frame gets a full window and ``out[:, m]`` is
    ``x`` itself. ``frames`` (K,) windows only those frames, (K, 2m+1, ...), the same rows as the whole
    track's window: one clip at a time, without the whole-track copy.
    """
    if frames is None:
        frames = torch.arange(x.shape[0], device=x.device)
    return x[window_index(frames, x.shape[0], m)]  # (K, 2m+1, ...)
