"""Training runs -> the weights directory `emo generate --weights DIR` reads.

A run directory holds `base/` (the full network the run started from, written once) and
`checkpoints/step_XXXXXXXX/` (only the trained parameters, their EMA, optimizer and RNG state). The trained
network is `base/` with a checkpoint's parameters put back; `export` writes it with `EMO.save_pretrained`
plus, optionally, `vae/` and `wav2vec2/` subfolders, so the result is a complete `--weights` directory.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from emo.errors import EmoError
from emo.training.checkpoints import BASE, EMA, TRAINABLE, resolve_checkpoint

log = logging.getLogger(__name__)

def load_trained_model(path: str | Path, use_ema: bool = True):
    """The network of an export directory (EMO layout), a run directory or one of its checkpoints."""
    from safetensors.torch import load_file

    from emo.models import EMO

    path = Path(path)
    if (path / "emo.json").is_file():
        return EMO.from_pretrained(path)
    checkpoint = resolve_checkpoint(path)
    run_dir = checkpoint.parent.parent
    if not (run_dir / BASE / "emo.json").is_file():
        raise EmoError(f"{run_dir} has no {BASE}/ network (the run directory is incomplete)")
    model = EMO.from_pretrained(run_dir / BASE)
    weights = checkpoint / (EMA if use_ema and (checkpoint / EMA).is_file() else TRAINABLE)
    load_trained_parameters(model, load_file(str(weights)), weights)
    log.info("loaded %s (%s)", checkpoint, weights.name)
    return model


def load_trained_parameters(model, state: dict, source) -> None:
    """Copy a checkpoint's trained parameters into `model` (every key must exist with its shape)."""
    import torch

    params = dict(model.named_parameters())
    bad = [k for k in state if k not in params or params[k].shape != state[k].shape]
    if bad:
        raise EmoError(f"{source} does not fit this network: e.g. {bad[0]} (was it written by another model preset?)")
    with torch.no_grad():
        for key, value in state.items():
            params[key].copy_(value)


def export(path: str | Path, out: str | Path, vae: str | Path | None = None, audio_encoder: str | Path | None = None,
           use_ema: bool = True, overwrite: bool = False) -> Path:
    """Write a run's (or checkpoint's) trained network to `out`, atomically, in the `--weights` layout.

    `vae` defaults to the run's VAE (its config's `vae`); `audio_encoder` (a wav2vec2 folder) is copied when
    given. The run's config is kept as `out/training_config.json`.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise EmoError(f"{out} exists; pass --overwrite to replace it")
    model = load_trained_model(path, use_ema=use_ema)
    config = None
    if not (Path(path) / "emo.json").is_file():
        run_dir = resolve_checkpoint(path).parent.parent
        if (run_dir / "config.json").is_file():
            config = json.loads((run_dir / "config.json").read_text())
            vae = vae or config.get("vae")

    out.parent.mkdir(parents=True, exist_ok=True)
    temp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(temp, ignore_errors=True)
    try:
        model.save_pretrained(temp)
        if vae:
            vae_dir = Path(vae) / "vae" if (Path(vae) / "vae").is_dir() else Path(vae)
            if not (vae_dir / "config.json").is_file():
                raise EmoError(f"--vae {vae}: not a diffusers VAE folder (no config.json)")
            shutil.copytree(vae_dir, temp / "vae")
        if audio_encoder:
            if not (Path(audio_encoder) / "config.json").is_file():
                raise EmoError(f"--audio-encoder {audio_encoder}: not a transformers wav2vec2 folder (no config.json)")
            shutil.copytree(audio_encoder, temp / "wav2vec2")
        if config is not None:
            (temp / "training_config.json").write_text(json.dumps(config, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(temp, out)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return out
