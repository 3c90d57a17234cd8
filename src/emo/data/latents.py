"""The latent cache: every frame of every clip encoded once by the latent codec (issue: training never
re-encodes frames).

``emo preprocess --add-latents --codec SPEC --out DIR`` writes ``latents.safetensors`` ("latents":
(F, C, h, w) float16) into each clip, from the clip's stored frames, and records the codec's fingerprint in
``dataset.json`` (key ``codec``): a dataset's latents all come from one codec, and training refuses a
codec other than the one that made them. Encoding a 128² frame with TAEF2 costs more than the small UNet's
forward pass, so with the cache a training step only reads.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from emo.codec import load_codec
from emo.data import manifest as mf
from emo.data.clips import LATENTS, META, read_frames
from emo.data.dataset_config import CODEC_KEY
from emo.errors import EmoError
from emo.media import atomic_path, writing

logger = logging.getLogger(__name__)


def check_codec(root: Path, fingerprint: str, spec) -> None:
    """One codec per dataset: record it, or refuse another."""
    config = mf.read_json(root / mf.DATASET_CONFIG)
    recorded = config.get(CODEC_KEY)
    if recorded is None:
        mf.write_json(root / mf.DATASET_CONFIG, {**config, CODEC_KEY: fingerprint})
    elif recorded != fingerprint:
        raise EmoError(
            f"--codec {spec} is not the codec that made the latents of {root} ({recorded[:15]}...); "
            "use the same codec, or a new --out directory"
        )


def dataset_codec(root: str | os.PathLike) -> str | None:
    """The fingerprint of the codec whose latents ``root`` caches (None: no latents)."""
    return mf.read_json(Path(root) / mf.DATASET_CONFIG).get(CODEC_KEY)


@torch.no_grad()
def add_latents(
    root: str | os.PathLike,
    codec_spec,
    shard: str | None = None,
    device: str = "cpu",
    batch: int = 32,
    progress: bool = True,
) -> dict:
    """Encode the frames of every clip without latents; returns the summary. Resumable (each clip's file is
    written atomically); ``shard`` 'i/N' takes every N-th clip."""
    # Here, not at the top: training imports this module (dataset_codec) and needs none of the preprocessing.
    from emo.data.preprocess import parse_shard

    root = Path(root)
    if not (root / mf.DATASET_CONFIG).is_file():
        raise EmoError(f"{root} is not a dataset made by emo preprocess (no {mf.DATASET_CONFIG})")
    codec = load_codec(codec_spec).to(device).eval()
    check_codec(root, codec.fingerprint(), codec_spec)
    index, num_shards = parse_shard(shard)
    clips = [
        c for c in mf.read_manifest(root)[index::num_shards] if not (root / c["path"] / LATENTS).is_file()
    ]
    for clip in tqdm(clips, unit="clip", desc="latents", disable=not progress):
        directory = root / clip["path"]
        with np.load(directory / META) as meta:
            offsets = meta["frame_offsets"]
        parts = []
        for start in range(0, clip["num_frames"], batch):
            frames = read_frames(directory, range(start, min(start + batch, clip["num_frames"])), offsets)
            pixels = (
                torch.from_numpy(frames).permute(0, 3, 1, 2).float().to(device) / 127.5 - 1
            )  # (N, 3, S, S)
            parts.append(codec.encode(pixels).to(torch.float16).cpu())  # (N, C, s, s)
        with writing(directory / LATENTS), atomic_path(directory / LATENTS) as temp:
            save_file({"latents": torch.cat(parts).contiguous()}, str(temp))
    logger.info("latents: %d clips encoded", len(clips))
    return mf.build_manifest(root)
