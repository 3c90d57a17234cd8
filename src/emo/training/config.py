"""The typed configuration of one training stage, read from YAML (EMO.md §3).

A config file has the sections below; every field is checked when it is loaded, and an unknown key or
a bad value is an EmoError naming the field (``train.lr must be > 0, got -1``). Paths are used as
written (relative paths are relative to the working directory). `configs/stage{1,2,3}.yaml` are the
full-size stages, `configs/stage{1,2,3}_tiny.yaml` CPU-sized ones.

Overrides use dotted names: ``train.lr=2e-5``, ``run.output_dir=runs/x`` (values are parsed as YAML).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from emo.conditioning.mouth import FIT_COMMAND
from emo.config import PRESETS
from emo.errors import EmoError
from emo.sampling import NUM_TRAIN_TIMESTEPS

STAGE_COMPONENTS = {  # EMO.md §3: what each stage trains unless the config says otherwise
    1: ["backbone.spatial", "reference_net", "face_locator"],
    2: ["backbone.temporal", "backbone.audio", "audio_projector"],
    3: ["backbone.temporal", "backbone.speed", "speed_encoder"],
}
MIXED_PRECISION = ("no", "bf16", "fp16")
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class InitConfig:
    sd15: str | None = (
        None  # stage 1: SD1.5 weights (diffusers folder or .safetensors/.ckpt); None = random (smoke runs)
    )
    checkpoint: str | None = None  # stages 2/3: the previous stage (export dir, run dir or checkpoint dir)
    motion_module: str | None = (
        None  # stage 2: AnimateDiff mm_sd_v15_v2 (.ckpt/.safetensors) or MotionAdapter folder
    )


@dataclass
class DataConfig:
    dataset: str = ""  # dataset directory made by `emo preprocess`
    size: int | None = None  # resize frames to size² (None: the dataset's size; paper 512)
    num_motion_frames: int = 4  # n (stages 2/3)
    num_frames: int = 12  # f, current frames per clip (stages 2/3)
    latents: bool = (
        False  # read the dataset's cached latents (emo preprocess --codec) instead of encoding frames
    )
    num_workers: int = 2  # DataLoader worker processes per GPU
    validation_dataset: str | None = None  # fixed validation inputs come from here (None: `dataset`)


@dataclass
class TrainConfig:
    components: list[str] = field(
        default_factory=list
    )  # what trains (emo.models.emo.COMPONENTS); [] = the stage's default
    batch_size: int = 1  # per device, per micro-batch (paper total: 48 stage 1, 4 stages 2/3)
    gradient_accumulation: int = 1  # micro-batches per optimizer step
    max_steps: int = 30000  # optimizer steps
    lr: float = 1e-5  # paper, all stages
    lr_schedule: str = "constant"  # after warmup: constant | cosine (to 0 at max_steps)
    warmup_steps: int = 0  # linear LR warmup from 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 1e-2
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0  # clip the global gradient norm (0 = measure only)
    mixed_precision: str = "no"  # no | bf16 | fp16 (autocast; master weights stay fp32)
    gradient_checkpointing: bool = False  # recompute UNet blocks in backward: less memory, ~30% slower
    noise_offset: float = 0.0  # add offset·N(0,1) per (video, channel) to the noise (0 = off)
    snr_gamma: float | None = (
        None  # min-SNR-γ loss weighting (Hang et al. 2023; 5.0 is usual); None = plain MSE
    )
    # extra loss weight on the mouth (its box from the lip landmarks, at latent resolution): the loss there
    # counts 1 + mouth_weight times, so the few latents that follow the audio are not lost in the rest
    # (Hallo's lip emphasis; 0 = EMO's plain Eq. 1)
    mouth_weight: float = 0.0
    # timesteps are drawn from [min_timestep, 1000): > 0 trains only the noisy end, where z_t no longer shows the
    # frame and the conditions (the audio for the mouth) must decide it (0 = EMO's uniform draw)
    min_timestep: int = 0
    # weight of the audio contrast (ours; emo.training.loss): each batch runs again with another sample's audio,
    # and the mouth's error must then be higher than with its own audio; needs batch_size >= 2 (0 = off)
    audio_contrast: float = 0.0
    # weight of the mouth reading (ours; emo.training.mouth_reading): the squared error of the mouth's opening in
    # the predicted frame, read by the linear mouth reader in `mouth_reader` (a file of
    # scripts/fit_mouth_reader.py); stages 2/3 (0 = off)
    mouth_reading: float = 0.0
    mouth_reader: str | None = None
    ema_decay: float | None = None  # keep an EMA of the trained weights (e.g. 0.9999); None = off
    drop_reference: float = 0.05  # P(reference image -> zero latent) (classifier-free guidance, EMO.md §3)
    drop_audio: float = 0.05  # P(audio features -> zeros) (stages 2/3)
    drop_both: float = 0.05  # P(both dropped)
    drop_motion: float = 0.05  # P(motion frames -> zero features, as for a video's first clip) (stages 2/3)
    seed: int = 0  # data order, noise, timesteps, dropout: all derived from it


@dataclass
class RunConfig:
    output_dir: str = "runs/stage"  # checkpoints/, logs/ (TensorBoard), samples/, base/, metrics.jsonl
    checkpoint_every: int = 1000  # optimizer steps between checkpoints (and one at the end)
    keep_checkpoints: int = 3  # keep the last K checkpoints
    validate_every: int = 1000  # steps between validation samples (0 = never)
    validation_steps: int = 25  # DDIM steps of the validation sample
    log_every: int = 10  # steps between TensorBoard points (metrics.jsonl gets every step)


@dataclass
class StageConfig:
    stage: int = 1  # 1 image, 2 video (temporal + audio), 3 speed
    model: str = "sd15"  # model preset (emo.config.PRESETS)
    codec: str = ""  # latent codec, frozen: an SD VAE folder (or its pipeline folder), a tiny-autoencoder folder, or taef2
    init: InitConfig = field(default_factory=InitConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @property
    def components(self) -> list[str]:
        return list(self.train.components) or list(STAGE_COMPONENTS[self.stage])

    @property
    def video(self) -> bool:
        return self.stage >= 2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> StageConfig:
        # Here, not at the top: reading and checking a config loads no torch / diffusers.
        from emo.models.emo import COMPONENTS

        t, d, r = self.train, self.data, self.run
        checks = [
            (self.stage in (1, 2, 3), "stage", f"must be 1, 2 or 3, got {self.stage}"),
            (self.model in PRESETS, "model", f"must be one of {', '.join(PRESETS)}, got {self.model!r}"),
            (
                bool(self.codec),
                "codec",
                "is required (an SD VAE folder, a tiny-autoencoder folder, or taef2)",
            ),
            (bool(d.dataset), "data.dataset", "is required (a directory made by `emo preprocess`)"),
            (
                d.size is None or (d.size >= 16 and d.size % 8 == 0),
                "data.size",
                f"must be a multiple of 8, >= 16, got {d.size}",
            ),
            (d.num_motion_frames >= 0, "data.num_motion_frames", f"must be >= 0, got {d.num_motion_frames}"),
            (d.num_frames >= 1, "data.num_frames", f"must be >= 1, got {d.num_frames}"),
            (d.num_workers >= 0, "data.num_workers", f"must be >= 0, got {d.num_workers}"),
            (
                not (set(t.components) - set(COMPONENTS)),
                "train.components",
                f"unknown component(s) {', '.join(sorted(set(t.components) - set(COMPONENTS)))}; known: {', '.join(COMPONENTS)}",
            ),
            (t.batch_size >= 1, "train.batch_size", f"must be >= 1, got {t.batch_size}"),
            (
                t.gradient_accumulation >= 1,
                "train.gradient_accumulation",
                f"must be >= 1, got {t.gradient_accumulation}",
            ),
            (t.max_steps >= 1, "train.max_steps", f"must be >= 1, got {t.max_steps}"),
            (t.lr > 0 and math.isfinite(t.lr), "train.lr", f"must be > 0, got {t.lr}"),
            (
                t.lr_schedule in LR_SCHEDULES,
                "train.lr_schedule",
                f"must be one of {', '.join(LR_SCHEDULES)}, got {t.lr_schedule!r}",
            ),
            (t.warmup_steps >= 0, "train.warmup_steps", f"must be >= 0, got {t.warmup_steps}"),
            (
                0 <= t.adam_beta1 < 1 and 0 <= t.adam_beta2 < 1,
                "train.adam_beta1/adam_beta2",
                "must be in [0, 1)",
            ),
            (t.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {t.weight_decay}"),
            (t.adam_eps > 0, "train.adam_eps", f"must be > 0, got {t.adam_eps}"),
            (t.max_grad_norm >= 0, "train.max_grad_norm", f"must be >= 0, got {t.max_grad_norm}"),
            (
                t.mixed_precision in MIXED_PRECISION,
                "train.mixed_precision",
                f"must be one of {', '.join(MIXED_PRECISION)}, got {t.mixed_precision!r}",
            ),
            (t.noise_offset >= 0, "train.noise_offset", f"must be >= 0, got {t.noise_offset}"),
            (t.mouth_weight >= 0, "train.mouth_weight", f"must be >= 0, got {t.mouth_weight}"),
            (t.audio_contrast >= 0, "train.audio_contrast", f"must be >= 0, got {t.audio_contrast}"),
            (t.mouth_reading >= 0, "train.mouth_reading", f"must be >= 0, got {t.mouth_reading}"),
            (
                t.mouth_reading == 0 or t.mouth_reader is not None,
                "train.mouth_reading",
                f"needs train.mouth_reader: make one with {FIT_COMMAND}",
            ),
            (
                0 <= t.min_timestep < NUM_TRAIN_TIMESTEPS,
                "train.min_timestep",
                f"must be in [0, {NUM_TRAIN_TIMESTEPS}), got {t.min_timestep}",
            ),
            (
                t.audio_contrast == 0 or t.batch_size >= 2,
                "train.audio_contrast",
                f"needs train.batch_size >= 2 (another sample's audio to contrast with), got {t.batch_size}",
            ),
            (
                t.snr_gamma is None or t.snr_gamma > 0,
                "train.snr_gamma",
                f"must be > 0 or null, got {t.snr_gamma}",
            ),
            (
                t.ema_decay is None or 0 < t.ema_decay < 1,
                "train.ema_decay",
                f"must be in (0, 1) or null, got {t.ema_decay}",
            ),
            (r.checkpoint_every >= 1, "run.checkpoint_every", f"must be >= 1, got {r.checkpoint_every}"),
            (r.keep_checkpoints >= 1, "run.keep_checkpoints", f"must be >= 1, got {r.keep_checkpoints}"),
            (r.validate_every >= 0, "run.validate_every", f"must be >= 0, got {r.validate_every}"),
            (r.validation_steps >= 1, "run.validation_steps", f"must be >= 1, got {r.validation_steps}"),
            (r.log_every >= 1, "run.log_every", f"must be >= 1, got {r.log_every}"),
            (bool(r.output_dir), "run.output_dir", "is required"),
        ]
        for name in ("drop_reference", "drop_audio", "drop_both", "drop_motion"):
            p = getattr(t, name)
            checks.append((0 <= p <= 1, f"train.{name}", f"must be a probability in [0, 1], got {p}"))
        checks.append(
            (
                t.drop_reference + t.drop_audio + t.drop_both <= 1,
                "train.drop_reference+drop_audio+drop_both",
                "must add up to at most 1 (they are exclusive events)",
            )
        )
        if self.stage == 1:
            checks.append(
                (
                    self.init.checkpoint is None or self.init.sd15 is None,
                    "init",
                    "stage 1 starts from init.sd15 or init.checkpoint, not both",
                )
            )
            for name in ("audio_contrast", "mouth_reading"):
                checks.append(
                    (getattr(t, name) == 0, f"train.{name}", "needs audio: it applies to stages 2 and 3 only")
                )
        else:
            checks.append(
                (
                    self.init.checkpoint is not None,
                    "init.checkpoint",
                    f"stage {self.stage} starts from the previous stage: set init.checkpoint",
                )
            )
        for ok, name, message in checks:
            if not ok:
                raise EmoError(f"{name} {message}")
        return self


def _coerce(value, annotation, name: str):
    """Check `value` against a dataclass field type (str, int, float, bool, lists, optionals, sections)."""
    hints = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        if value is None and type(None) in hints:
            return None
        inner = [h for h in hints if h is not type(None)]
        return _coerce(value, inner[0], name)
    if dataclasses.is_dataclass(annotation):
        return _from_dict(annotation, value, name)
    if typing.get_origin(annotation) is list:
        if not isinstance(value, list):
            raise EmoError(f"{name} must be a list, got {value!r}")
        return [_coerce(v, hints[0], f"{name}[{i}]") for i, v in enumerate(value)]
    if annotation is bool:
        if not isinstance(value, bool):
            raise EmoError(f"{name} must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise EmoError(f"{name} must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML reads "1e-5" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise EmoError(f"{name} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EmoError(f"{name} must be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise EmoError(f"{name} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {annotation} for {name}")


def _from_dict(cls, data, prefix: str = ""):
    if not isinstance(data, dict):
        raise EmoError(f"{prefix or 'the config'} must be a mapping of fields, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise EmoError(
            f"unknown config key(s) {', '.join(where + k for k in unknown)}; "
            f"known{' in ' + prefix if prefix else ''}: {', '.join(sorted(fields))}"
        )
    values = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**values)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`section.key=value` strings onto a raw config dict (values parsed as YAML)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise EmoError(f"override {item!r} must look like section.key=value (e.g. train.lr=2e-5)")
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise EmoError(f"override {item!r}: {part} is not a section")
        node[leaf] = yaml.safe_load(raw)
    return data


def load_config(path: str | Path, overrides: list[str] = ()) -> StageConfig:
    """Read, override and validate a stage config (EmoError naming the bad field)."""
    path = Path(path)
    if not path.is_file():
        raise EmoError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise EmoError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return config_from_dict(apply_overrides(data, list(overrides)), str(path))


def config_from_dict(data: dict, source: str = "config") -> StageConfig:
    try:
        return _from_dict(StageConfig, data).validate()
    except EmoError as exc:
        raise EmoError(f"{source}: {exc}") from None
