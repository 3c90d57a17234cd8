"""`--device` for every command: a name checked here, before any model loads, with a one-line EmoError."""

from __future__ import annotations

from emo.errors import EmoError


def resolve_device(name: str):
    """``auto`` (CUDA when there is one, else the CPU), ``cpu``, ``cuda[:N]``, or another torch device type
    that works here; an EmoError saying what to use instead otherwise."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise EmoError(f"--device {name!r} is not a device (try cpu or cuda)") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EmoError(f"--device {name} but no CUDA GPU is available; use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise EmoError(
                f"--device {name}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}"
            )
        return device
    try:  # mps, xpu, ...: fail here, before the model loads, rather than in the first .to()
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:
        reason = (
            (str(exc).strip() or type(exc).__name__).splitlines()[0].split(". ")[0]
        )  # torch's first sentence
        raise EmoError(f"--device {name} is not usable here ({reason}); use --device cpu or cuda") from None
    return device
