"""Loading public weight files (plain PyTorch state dicts) into our network definitions.

Every file goes through ``torch.load(weights_only=True)``: tensors and plain containers only, no code.
Key names and shapes are checked against the network before loading, so a wrong file fails with a
one-line message naming the file and the flag, instead of loading half a network.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from emo.errors import EmoError


def read_state_dict(path: str | os.PathLike, flag: str, nested: tuple[str, ...] = ()) -> dict:
    """Read a state dict from ``path`` (``torch.load(weights_only=True)``).

    ``nested``: keys under which training checkpoints keep the weights (e.g. ``("net_recon",)`` for
    Deep3DFaceRecon's ``epoch_20.pth``, ``("state_dict",)``); the first present one is used. A
    ``module.`` prefix left by DataParallel is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise EmoError(f"{flag} {path}: no such file; give the path of the downloaded weights")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, or a pickle with code (not a plain state dict)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EmoError(f"{flag} {path}: not a readable PyTorch state dict ({reason[:160]})") from None
    for key in nested:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise EmoError(f"{flag} {path}: expected a dict of tensors (a state dict)")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_into(model, state: dict, path: str | os.PathLike, flag: str) -> None:
    """Load ``state`` into ``model`` strictly; BatchNorm ``num_batches_tracked`` may be absent (older files)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(
                f"{len(wrong)} with other shapes (e.g. {k}: {tuple(state[k].shape)} vs {expected[k]})"
            )
        raise EmoError(
            f"{flag} {path}: not the expected weight file for {type(model).__name__} ({'; '.join(parts)})"
        )
    model.load_state_dict(state, strict=False)
    model.eval().requires_grad_(False)
