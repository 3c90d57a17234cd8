"""Training runs -> the weights directory `emo generate --weights DIR` reads.

A run directory holds `base/` (the full network the run started from, written once) and
`checkpoints/step_XXXXXXXX/` (only the trained parameters, their EMA, optimizer and RNG state). The trained
network is `base/` with a checkpoint's parameters put back; `export` writes it with `EMO.save_pretrained`
plus, optionally, `vae/` or `codec/` (the latent codec), `audio_front_end.json` and `wav2vec2/`, so the result is a complete `--weights` directory.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from emo.codec import SDVAECodec, TinyAutoencoderCodec, load_codec
from emo.conditioning.audio_front_end import FRONT_END_RECORD, read_front_end_record, record_from_id
from emo.data.dataset_config import dataset_front_end
from emo.errors import EmoError
from emo.media import replace_folder, writing
from emo.models import EMO
from emo.training.checkpoints import (
    BASE,
    EMA,
    RUN_CONFIG,
    TRAINABLE,
    load_trained_parameters,
    resolve_checkpoint,
    run_of,
)

log = logging.getLogger(__name__)


def is_export(path: str | Path) -> bool:
    """Whether `path` is an export directory (the EMO layout) rather than a run or one of its checkpoints."""
    return (Path(path) / "emo.json").is_file()


def load_trained_model(path: str | Path, use_ema: bool = True):
    """The network of an export directory (EMO layout), a run directory or one of its checkpoints."""
    path = Path(path)
    if is_export(path):
        return EMO.from_pretrained(path)
    checkpoint = resolve_checkpoint(path)
    run_dir = run_of(checkpoint)
    if not (run_dir / BASE / "emo.json").is_file():
        raise EmoError(f"{run_dir} has no {BASE}/ network (the run directory is incomplete)")
    model = EMO.from_pretrained(run_dir / BASE)
    weights = checkpoint / (EMA if use_ema and (checkpoint / EMA).is_file() else TRAINABLE)
    load_trained_parameters(model, load_file(str(weights)), weights)
    log.info("loaded %s (%s)", checkpoint, weights.name)
    return model


def export(
    path: str | Path,
    out: str | Path,
    codec: str | Path | None = None,
    audio_encoder: str | Path | None = None,
    use_ema: bool = True,
    overwrite: bool = False,
    half: bool = False,
) -> Path:
    """Write a run's (or checkpoint's) trained network to `out`, atomically, in the `--weights` layout.

    `codec` defaults to the run's (its config's `codec`): an SD VAE is copied as `vae/`, a tiny autoencoder
    saved as `codec/`. The audio front-end the run's dataset was made with is recorded as
    `audio_front_end.json`; `audio_encoder` (a wav2vec2 folder) is copied when given. The run's config is kept
    as `out/training_config.json`. `half` stores the network in float16 (half the size; generation computes
    in the precision it is asked for).
    """
    out = Path(out)
    if out.exists() and not overwrite:  # a folder: check_output's file rules do not apply
        raise EmoError(f"{out} exists; pass --overwrite to replace it")
    # A run directory is resolved to its latest checkpoint once, so the network, its front-end record and its
    # config all come from the same checkpoint even while the run is still writing new ones.
    source = Path(path) if is_export(path) else resolve_checkpoint(path)
    model = load_trained_model(source, use_ema=use_ema)
    config = None
    front_end = recorded_front_end(source)
    if not is_export(source):
        run_dir = run_of(source)
        if (run_dir / RUN_CONFIG).is_file():
            config = json.loads((run_dir / RUN_CONFIG).read_text())
            codec = codec or config.get("codec")
    if half:
        model = model.to(torch.float16)

    out.parent.mkdir(parents=True, exist_ok=True)
    temp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(temp, ignore_errors=True)
    try:
        with writing(out):  # a full disk is one line naming the output, and no partial folder
            model.save_pretrained(temp)
            if codec:
                latent_codec = load_codec(codec)
                if isinstance(latent_codec, TinyAutoencoderCodec):
                    latent_codec.save(temp / "codec")
                elif isinstance(latent_codec, SDVAECodec):
                    vae_dir = Path(codec) / "vae" if (Path(codec) / "vae").is_dir() else Path(codec)
                    shutil.copytree(vae_dir, temp / "vae")
            if front_end is not None:
                (temp / FRONT_END_RECORD).write_text(json.dumps(front_end, indent=2))
            if audio_encoder:
                if not (Path(audio_encoder) / "config.json").is_file():
                    raise EmoError(
                        f"--audio-encoder {audio_encoder}: not a transformers wav2vec2 folder (no config.json)"
                    )
                shutil.copytree(audio_encoder, temp / "wav2vec2")
            if config is not None:
                (temp / "training_config.json").write_text(json.dumps(config, indent=2))
            replace_folder(temp, out)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return out


def recorded_front_end(path: str | Path) -> dict | None:
    """The record of the audio front-end a network was trained with (None: none recorded).

    An export directory keeps it as `audio_front_end.json`, and so does a run directory, from the dataset it
    started on. Runs made before that recorded it only in their dataset, found through the run's config (its
    `data.dataset`, relative to where the run was started).
    """
    path = Path(path)
    if is_export(path):
        return read_front_end_record(path / FRONT_END_RECORD)
    run_dir = run_of(resolve_checkpoint(path))
    if (run_dir / FRONT_END_RECORD).is_file():
        return read_front_end_record(run_dir / FRONT_END_RECORD)
    try:
        dataset = Path(json.loads((run_dir / RUN_CONFIG).read_text())["data"]["dataset"])
        front_end = dataset_front_end(dataset)
    except (OSError, KeyError, TypeError, json.JSONDecodeError, EmoError):
        return None
    return record_from_id(front_end) if front_end else None
