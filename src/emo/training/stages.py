"""What differs between the three training stages (EMO.md §3): the starting weights, the dataset, and how a
batch becomes the network's inputs. What each stage *trains* is data: `StageConfig.components`.

| stage | frames per item          | conditions                        | starts from                         |
|-------|--------------------------|-----------------------------------|-------------------------------------|
| 1     | 1 target frame           | reference, face mask              | SD1.5 (init.sd15)                   |
| 2     | n motion + f current     | reference, face mask, motion, audio | stage 1 (init.checkpoint) + AnimateDiff (init.motion_module) |
| 3     | n motion + f current     | as stage 2 + head speed           | stage 2 (init.checkpoint)           |
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from einops import rearrange

from emo.codec import LatentCodec
from emo.conditioning.audio_front_end import record_from_id
from emo.config import preset
from emo.data import manifest as mf
from emo.data.dataset import Stage1Dataset, VideoClipDataset
from emo.data.dataset_config import dataset_front_end
from emo.data.latents import dataset_codec
from emo.errors import EmoError
from emo.models import EMO, Conditioning
from emo.models.loading import load_motion_module, load_sd15
from emo.training.config import StageConfig
from emo.training.export import load_trained_model, recorded_front_end

log = logging.getLogger(__name__)


@dataclass
class ModelInputs:
    """One batch as clean latents and conditions, on the training device."""

    target: torch.Tensor  # (B, F, C, h, w) clean latents of the frames to denoise
    reference: torch.Tensor  # (B, C, h, w) clean latent of the reference image
    motion: torch.Tensor | None  # (B, n, C, h, w) clean latents of the motion frames (stages 2/3)
    num_motion: int  # n (0 in stage 1)
    audio: torch.Tensor | None  # (B, F, 2m+1, L, D) windowed audio features (stages 2/3)
    speed: torch.Tensor | None  # (B, F, 2m+1) windowed head speeds (stage 3)
    mask: torch.Tensor  # (B, 1, H, W) face-region mask at pixel resolution
    mouth: torch.Tensor | None = None  # (B, F, 4) each target frame's mouth box, fractions of the frame


def build_model(cfg: StageConfig):
    """The network a stage starts from (EMO.md §3): SD1.5 for stage 1, the previous stage for 2 and 3."""
    if cfg.init.checkpoint is not None:
        model = load_trained_model(cfg.init.checkpoint)
        log.info("stage %d starts from %s", cfg.stage, cfg.init.checkpoint)
    else:
        torch.manual_seed(
            cfg.train.seed
        )  # new layers (Face Locator, projectors...) start the same on every run and rank
        model = EMO.from_config(preset(cfg.model))
        if cfg.init.sd15 is not None:
            load_sd15(model, cfg.init.sd15)
        else:
            log.warning(
                "init.sd15 is not set: the backbone and ReferenceNet start from random weights "
                "(fine for smoke runs; real training starts from SD1.5)"
            )
    if cfg.init.motion_module is not None:
        load_motion_module(model, cfg.init.motion_module)
    check_model_fits_data(model, cfg)
    return model


def audio_window(cfg: StageConfig) -> int:
    """m, the ±m audio/speed window the stage's model preset was built with (the data is windowed alike)."""
    return preset(cfg.model).audio_window


def check_model_fits_data(model, cfg: StageConfig) -> None:
    """The audio/speed windows of the data must be the ones the network was built for."""
    if not cfg.video:
        return
    m = audio_window(cfg)
    windows = {
        "audio projector": model.audio_projector.config.window,
        "speed encoder": model.speed_encoder.config.window,
    }
    for what, size in windows.items():
        if size != 2 * m + 1:
            raise EmoError(
                f"the network's {what} takes windows of {size} frames, the model preset {cfg.model!r} "
                f"windows the data over {2 * m + 1}: train with the preset the network was built with"
            )
    needed = cfg.data.num_motion_frames + cfg.data.num_frames
    if needed > model.backbone.config.temporal_max_len:
        raise EmoError(
            f"data.num_motion_frames + data.num_frames = {needed} is more than the temporal modules' "
            f"{model.backbone.config.temporal_max_len} positions"
        )


def build_dataset(cfg: StageConfig, root: str | Path | None = None, seed: int | None = None):
    root = root or cfg.data.dataset
    seed = cfg.train.seed if seed is None else seed
    if not Path(root).is_dir():
        raise EmoError(
            f"data.dataset {root} is not a directory; make one with `emo preprocess VIDEOS --out {root}`"
        )
    if cfg.video:
        d = cfg.data
        return VideoClipDataset(
            root,
            num_motion_frames=d.num_motion_frames,
            num_frames=d.num_frames,
            audio_window=audio_window(cfg),
            size=d.size,
            seed=seed,
            latents=d.latents,
        )
    return Stage1Dataset(root, size=cfg.data.size, seed=seed, latents=cfg.data.latents)


@torch.no_grad()
def encode_batch(
    batch: dict, codec: LatentCodec, cfg: StageConfig, generator: torch.Generator, device, dtype
) -> ModelInputs:
    """Dataset items (pixels in [-1, 1]) -> latents and conditions.

    The target frames are a sample of the codec's posterior where it has one (the SD VAE, as in SD
    training); the reference and motion frames use its mean, as generation does. Items that carry cached
    latents (``data.latents``) are used as stored: the codec's deterministic encoding (for the SD VAE, its
    posterior mean).
    """

    def encode(pixels: torch.Tensor, sample: bool) -> torch.Tensor:  # (N, 3, H, W) -> (N, C, h, w)
        return codec.encode(pixels.to(device, dtype), generator=generator if sample else None)

    if "reference_latent" in batch:  # the dataset's latent cache: nothing to encode
        return cached_inputs(batch, cfg, device, dtype)

    mask = batch["mask"].to(device)  # (B, 1, H, W)
    mouth = batch["mouth"].to(device) if "mouth" in batch else None  # (B, F, 4)
    reference = encode(batch["reference"], sample=False)  # (B, C, h, w)
    if not cfg.video:
        target = encode(batch["target"], sample=True)[:, None]  # (B, 1, C, h, w)
        return ModelInputs(target, reference, None, 0, None, None, mask, mouth)

    n = cfg.data.num_motion_frames
    frames = batch["frames"]  # (B, n+f, 3, H, W)
    b = frames.shape[0]
    motion = None
    if n:
        motion = rearrange(
            encode(rearrange(frames[:, :n], "b t c h w -> (b t) c h w"), sample=False),
            "(b t) c h w -> b t c h w",
            b=b,
        )  # (B, n, C, h, w)
    target = rearrange(
        encode(rearrange(frames[:, n:], "b t c h w -> (b t) c h w"), sample=True),
        "(b t) c h w -> b t c h w",
        b=b,
    )  # (B, f, C, h, w)
    audio = batch["audio"].to(device)  # (B, f, 2m+1, L, D)
    speed = batch["speed"].to(device) if cfg.stage >= 3 else None  # (B, f, 2m+1)
    return ModelInputs(target, reference, motion, n, audio, speed, mask, mouth)


def cached_inputs(batch: dict, cfg: StageConfig, device, dtype) -> ModelInputs:
    """Dataset items with cached latents (``data.latents``) -> ModelInputs, as :func:`encode_batch`."""
    mask = batch["mask"].to(device)  # (B, 1, H, W)
    mouth = batch["mouth"].to(device) if "mouth" in batch else None  # (B, F, 4)
    reference = batch["reference_latent"].to(device, dtype)  # (B, C, h, w)
    if not cfg.video:
        return ModelInputs(
            batch["target_latent"].to(device, dtype)[:, None], reference, None, 0, None, None, mask, mouth
        )
    n = cfg.data.num_motion_frames
    latents = batch["latents"].to(device, dtype)  # (B, n+f, C, h, w)
    speed = batch["speed"].to(device) if cfg.stage >= 3 else None
    motion = latents[:, :n] if n else None
    return ModelInputs(latents[:, n:], reference, motion, n, batch["audio"].to(device), speed, mask, mouth)


def check_cached_latents(root, codec: LatentCodec, spec: str) -> None:
    """Cached latents are used only with the codec that made them (the model decodes with it)."""
    if not Path(root).is_dir():
        raise EmoError(
            f"data.dataset {root} is not a directory; make one with `emo preprocess VIDEOS --out {root}`"
        )
    recorded = dataset_codec(root)
    if recorded is None:
        raise EmoError(
            f"{root} has no cached latents (data.latents is true); make them with "
            f"`emo preprocess --add-latents --out {root} --codec {spec}`, or set data.latents: false"
        )
    if recorded != codec.fingerprint():
        raise EmoError(
            f"the latents of {root} were made by another codec ({recorded[:15]}...) than codec {spec}: "
            f"use that codec, or remake them with `emo preprocess --add-latents --codec {spec}` on a "
            "copy of the dataset"
        )


def check_audio_front_end(cfg: StageConfig, trained_from: str | Path | None) -> dict | None:
    """The network hears the features it was trained on: stages 2 and 3 refuse a dataset whose audio front-end
    (its dataset.json) is not the one `trained_from` (the starting checkpoint, or the resumed run) recorded,
    and a validation dataset of another front-end. Returns the record of the dataset's front-end, which the
    run keeps (None: the dataset has no audio features, or was given as an object)."""
    found = {}
    for root in dict.fromkeys(filter(None, (cfg.data.dataset, cfg.data.validation_dataset))):
        if (Path(root) / mf.DATASET_CONFIG).is_file():
            found[root] = dataset_front_end(root)
    ids = set(filter(None, found.values()))
    if cfg.stage >= 2 and len(ids) > 1:
        raise EmoError(
            f"data.dataset {cfg.data.dataset} and data.validation_dataset {cfg.data.validation_dataset} have "
            "audio features of different front-ends; preprocess both with the same --audio-encoder"
        )
    front_end = found.get(cfg.data.dataset)
    if front_end is None:
        return None
    record = record_from_id(front_end)
    trained = recorded_front_end(trained_from) if trained_from is not None and cfg.stage >= 2 else None
    if trained is not None and trained.get("id") != front_end:
        raise EmoError(
            f"{trained_from} was trained with {trained['kind']} audio features ({trained.get('id', '?')[:15]}...), "
            f"but the features of {cfg.data.dataset} are {record['kind']} ({front_end[:15]}...): use a dataset "
            "preprocessed with the checkpoint's --audio-encoder (`emo preprocess --add-audio-features`)"
        )
    return record


def check_audio_features(inputs: ModelInputs, model) -> None:
    if inputs.audio is None:
        return
    proj = model.audio_projector.config
    if tuple(inputs.audio.shape[-2:]) != (proj.num_layers, proj.feature_dim):
        raise EmoError(
            f"the dataset's audio features are {inputs.audio.shape[-2]} layers x {inputs.audio.shape[-1]}, "
            f"the model expects {proj.num_layers} x {proj.feature_dim}: compute them with the matching "
            "wav2vec2 (`emo preprocess --add-audio-features --audio-encoder DIR`)"
        )


def unused_parameters(net, model, cfg: StageConfig, device) -> list[str]:
    """Names of trainable parameters that the stage's loss does not depend on at all.

    One forward/backward on small constant inputs of the stage's shapes: a parameter whose gradient stays
    None is not in the graph (e.g. the ReferenceNet's last transformer block: only its *input* is a
    reference feature, so its attention, feed-forward and output projection feed nothing). Such parameters
    are left out of the optimizer, so DDP needs no `find_unused_parameters` and checkpoints hold only what
    trains.
    """
    b, h = 1, 8
    frames = cfg.data.num_frames if cfg.video else 1
    n = cfg.data.num_motion_frames if cfg.video else 0
    c = model.backbone.config.in_channels
    latent = torch.full((b, frames, c, h, h), 0.1, device=device)
    motion = torch.full((b, n, c, h, h), 0.1, device=device) if n else None
    proj = model.audio_projector.config
    audio = (
        torch.full((b, frames, proj.window, proj.num_layers, proj.feature_dim), 0.1, device=device)
        if cfg.video
        else None
    )
    speed = (
        torch.full((b, frames, model.speed_encoder.config.window), 0.5, device=device)
        if cfg.stage >= 3
        else None
    )
    mask = torch.ones((b, 1, h * 8, h * 8), device=device)
    timesteps = torch.full((b,), 500, device=device)
    keep = torch.ones(b, device=device) if n else None
    eps = net(
        latent,
        timesteps,
        latent[:, 0],
        motion,
        n,
        keep,
        Conditioning(audio=audio, speed=speed, face_mask=mask),
    )
    eps.float().sum().backward()
    unused = [k for k, p in model.named_parameters() if p.requires_grad and p.grad is None]
    model.zero_grad(set_to_none=True)
    return unused
