"""The training loop of every stage, on `accelerate`: one CPU, one GPU, several GPUs or nodes, same code.

The loss is in `emo.training.loss`, checkpoints and the run layout in `emo.training.checkpoints`, and
validation samples with `emo.sampling` exactly as generation does.

Determinism: the data order comes from (seed, epoch), each item from the dataset's (seed, epoch, index),
and every random draw of a micro-batch (VAE sample, noise, timesteps, dropout) from a generator seeded by
(seed, rank, step, micro-batch). A resumed run therefore repeats the uninterrupted run exactly.

Checkpoints are written every `run.checkpoint_every` steps and at the end. SIGTERM or SIGHUP (what SLURM and
Kubernetes send before they kill a job) lets the optimizer step in flight finish, checkpoints it, and raises
`emo.termination.Terminated`: `--resume auto` then continues exactly as if the run had not stopped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm

from emo.codec import LatentCodec, load_codec
from emo.conditioning.audio_front_end import FRONT_END_RECORD
from emo.conditioning.mouth import MouthReader
from emo.errors import EmoError
from emo.models import EMO
from emo.sampling import training_schedule
from emo.termination import DeferredTermination, Terminated
from emo.training.checkpoints import BASE, RUN_CONFIG, Checkpointer, Position
from emo.training.config import StageConfig, TrainConfig
from emo.training.loss import TrainingModel, denoising_loss, step_generator
from emo.training.stages import (
    ModelInputs,
    build_dataset,
    build_model,
    check_audio_features,
    check_audio_front_end,
    check_cached_latents,
    encode_batch,
    unused_parameters,
)
from emo.training.validation import FixedInputs, fixed_inputs, sample_video, validation_loss, write_sample

log = logging.getLogger(__name__)


class EMA:
    """Exponential moving average of the trained parameters (kept in fp32 on the training device)."""

    def __init__(self, named: dict[str, nn.Parameter], decay: float):
        self.decay = decay
        self.shadow = {k: p.detach().float().clone() for k, p in named.items()}

    @torch.no_grad()
    def update(self, named: dict[str, nn.Parameter]) -> None:
        for k, p in named.items():
            self.shadow[k].lerp_(p.detach().float(), 1 - self.decay)


@dataclass
class TrainResult:
    run_dir: Path
    step: int  # optimizer steps done
    losses: dict[int, float] = field(
        default_factory=dict
    )  # step -> mean loss, for the steps run by this call
    last_checkpoint: Path | None = None


def lr_lambda(cfg: StageConfig):
    t = cfg.train

    def factor(step: int) -> float:
        if step < t.warmup_steps:
            return (step + 1) / (t.warmup_steps + 1)
        if t.lr_schedule == "cosine":
            progress = (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0

    return factor


def reconcile_deepspeed_config(ds_config: dict, train: TrainConfig, num_processes: int) -> list[str]:
    """Make a DeepSpeed config (the plugin's `deepspeed_config` dict, changed in place) train with the stage
    config's batch, gradient accumulation and clipping; returns "key: old -> new" for each value it overrode.

    accelerate lets DeepSpeed's own values win with only a warning, so an accelerate config left at
    `gradient_accumulation_steps: 1` would silently take 8x the optimizer steps of a stage config that
    accumulates 8 micro-batches. The stage config is the one place these are set, so its values are written
    here. `train_batch_size` (DeepSpeed checks it equals micro-batch x accumulation x processes) is set only
    when the config names a number; "auto" is filled in by accelerate from the values written here.
    """
    # gradient_clipping 0.0: DeepSpeed does not clip, as train.max_grad_norm 0 (measure only)
    wanted = {
        "train_micro_batch_size_per_gpu": train.batch_size,
        "gradient_accumulation_steps": train.gradient_accumulation,
        "gradient_clipping": float(train.max_grad_norm),
    }
    if ds_config.get("train_batch_size", "auto") != "auto":
        wanted["train_batch_size"] = train.batch_size * train.gradient_accumulation * num_processes
    changed = []
    for key, value in wanted.items():
        old = ds_config.get(key, "auto")
        if old != "auto" and old != value:
            changed.append(f"{key}: {old} -> {value}")
        ds_config[key] = value
    return changed


class Trainer:
    """Trains one stage. `dataset` / `codec` may be given directly (benchmarks, tests); by default they are
    built from the config. A `model` given directly replaces `cfg.init` and is not saved as `base/`, so such
    a run can be neither resumed nor exported (benchmarks only)."""

    def __init__(self, cfg: StageConfig, dataset=None, codec: LatentCodec | None = None, model=None):
        self.cfg = cfg
        self.run_dir = Path(cfg.run.output_dir)
        self.accelerator = Accelerator(
            mixed_precision=cfg.train.mixed_precision,
            gradient_accumulation_steps=cfg.train.gradient_accumulation,
        )
        self.device = self.accelerator.device
        self.rank = self.accelerator.process_index
        self.world = self.accelerator.num_processes
        if cfg.train.mixed_precision == "fp16" and self.device.type == "cpu":
            # accelerate runs fp16 on a CPU with neither autocast nor loss scaling: only the inputs would be
            # half, which is neither the fp16 training asked for nor a tested path.
            raise EmoError(
                "train.mixed_precision fp16 needs a GPU (accelerate has no fp16 autocast or grad "
                "scaler on the CPU); on a CPU use bf16 or no"
            )
        self.dtype = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[
            cfg.train.mixed_precision
        ]
        self.checkpoints = Checkpointer(self.run_dir, self.accelerator, cfg.run.keep_checkpoints)
        self._dataset = dataset
        self._codec = codec
        self._model = model
        self._validation_inputs: ModelInputs | None = None

    # -- setup -------------------------------------------------------------------------------------
    def _setup(self, resume: Path | None) -> None:
        cfg, acc = self.cfg, self.accelerator
        # The codec and the data first: a wrong path fails before the network is built and base/ written.
        codec = self._codec if self._codec is not None else load_codec(cfg.codec)
        self.codec = codec.to(self.device).eval().requires_grad_(False)
        if self.dtype != torch.float32:
            self.codec.to(dtype=self.dtype)
        if cfg.data.latents:
            for root in {cfg.data.dataset, cfg.data.validation_dataset or cfg.data.dataset}:
                check_cached_latents(root, self.codec, cfg.codec)
        self.front_end = check_audio_front_end(
            cfg, self.run_dir if resume is not None else cfg.init.checkpoint
        )
        self.dataset = self._dataset if self._dataset is not None else build_dataset(cfg)
        self.batches_per_epoch = len(self.dataset) // (cfg.train.batch_size * self.world)
        if self.batches_per_epoch == 0:
            raise EmoError(
                f"the dataset has {len(self.dataset)} items, fewer than one global batch "
                f"(train.batch_size {cfg.train.batch_size} x {self.world} processes)"
            )
        if self._model is not None:
            model = self._model
        elif resume is not None:
            model = EMO.from_pretrained(self.run_dir / BASE)  # what this run started from
        else:
            model = build_model(cfg)
            if acc.is_main_process:
                self._write_base(model)
            acc.wait_for_everyone()
        self.model = model
        model.set_trainable(self.cfg.components)
        model.to(self.device)
        self.unused = unused_parameters(TrainingModel(model), model, cfg, self.device)
        if self.unused:
            log.warning(
                "%d parameters of %s do not affect this stage's loss and stay frozen (e.g. %s)",
                len(self.unused),
                ", ".join(cfg.components),
                self.unused[0],
            )
        unused = set(self.unused)
        self.trainable = {k: p for k, p in model.named_parameters() if p.requires_grad and k not in unused}
        for k in unused:
            model.get_parameter(k).requires_grad_(False)
        trainable = list(self.trainable.values())
        log.info(
            "training %s: %.2fM of %.2fM parameters",
            ", ".join(cfg.components),
            sum(p.numel() for p in trainable) / 1e6,
            sum(p.numel() for p in model.parameters()) / 1e6,
        )
        if cfg.train.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        model.train()

        t = cfg.train
        optimizer = torch.optim.AdamW(
            list(self.trainable.values()),
            lr=t.lr,
            betas=(t.adam_beta1, t.adam_beta2),
            weight_decay=t.weight_decay,
            eps=t.adam_eps,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
        plugin = acc.state.deepspeed_plugin
        if plugin is not None:  # the stage config decides batch, accumulation and clipping, not DeepSpeed's
            for change in reconcile_deepspeed_config(plugin.deepspeed_config, t, self.world):
                log.warning("DeepSpeed config %s (from the stage config's train section)", change)
            plugin.gradient_accumulation_steps = t.gradient_accumulation
            plugin.gradient_clipping = float(t.max_grad_norm)
        if acc.gradient_accumulation_steps != t.gradient_accumulation:
            # ACCELERATE_GRADIENT_ACCUMULATION_STEPS (from an accelerate config) overrides what Accelerator()
            # was given; the loop below accumulates train.gradient_accumulation micro-batches.
            log.warning(
                "accelerate was set to accumulate %d micro-batches; using train.gradient_accumulation %d",
                acc.gradient_accumulation_steps,
                t.gradient_accumulation,
            )
            acc.gradient_accumulation_steps = t.gradient_accumulation
        self.net, self.optimizer = acc.prepare(TrainingModel(model), optimizer)
        self.ema = EMA(self.trainable, t.ema_decay) if t.ema_decay is not None else None

        self.noise = training_schedule()
        self.alphas_cumprod = self.noise.alphas_cumprod.to(self.device)
        channels = model.backbone.config.in_channels
        self.reader = MouthReader.load(t.mouth_reader, channels) if t.mouth_reading else None
        self.writer = None

    def _write_base(self, model) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        base = self.run_dir / BASE
        temp = self.run_dir / f".{BASE}.tmp"
        shutil.rmtree(temp, ignore_errors=True)
        try:
            model.save_pretrained(temp)
        except BaseException:  # also SIGTERM / Ctrl-C: no half-written base/ left behind
            shutil.rmtree(temp, ignore_errors=True)
            raise
        shutil.rmtree(base, ignore_errors=True)
        os.replace(temp, base)
        (self.run_dir / RUN_CONFIG).write_text(json.dumps(self.cfg.to_dict(), indent=2))
        if self.front_end is not None:  # export finds it here, wherever the dataset has moved
            (self.run_dir / FRONT_END_RECORD).write_text(json.dumps(self.front_end, indent=2))

    # -- data --------------------------------------------------------------------------------------
    def _batches(self, position: Position):
        """Micro-batches for this process from `position` on, forever (epoch after epoch).

        Epoch e visits the items in torch.randperm(N, seed + e) order; micro-batch b of the epoch is the
        b-th slice of `batch_size x processes` items, this process taking its own `batch_size` of it.
        """
        cfg = self.cfg
        bs, epoch, start = cfg.train.batch_size, position.epoch, position.batch
        while True:
            order = torch.randperm(
                len(self.dataset), generator=torch.Generator().manual_seed(cfg.train.seed + epoch)
            )
            batches = [
                order[(b * self.world + self.rank) * bs : (b * self.world + self.rank + 1) * bs].tolist()
                for b in range(start, self.batches_per_epoch)
            ]
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch)
            loader = torch.utils.data.DataLoader(
                self.dataset, batch_sampler=batches, num_workers=cfg.data.num_workers
            )
            for b, batch in enumerate(loader, start=start):
                yield epoch, b, batch
            epoch, start = epoch + 1, 0

    # -- the loop ----------------------------------------------------------------------------------
    def fit(self, resume: str | Path | None = None, stop_at: int | None = None) -> TrainResult:
        """Train to `train.max_steps` (or stop after `stop_at` steps: a checkpoint is written there).

        resume: None (fresh run; an existing run directory with checkpoints is refused), "auto" (the latest
        checkpoint of `run.output_dir` if any, else fresh), or a checkpoint directory.
        """
        checkpoint = self.checkpoints.resolve_resume(resume)
        self._setup(checkpoint)
        position = self._load_checkpoint(checkpoint) if checkpoint is not None else Position()
        self._open_logs(position.step)
        end = min(self.cfg.train.max_steps, stop_at) if stop_at is not None else self.cfg.train.max_steps
        result = TrainResult(self.run_dir, position.step, last_checkpoint=checkpoint)
        if position.step >= end:
            log.info("nothing to do: step %d of %d reached", position.step, end)
            self._close()
            return result
        acc, r = self.accelerator, self.cfg.run
        batches = self._batches(position)
        if checkpoint is None and r.validate_every:
            self.validate(0)  # the starting point of the validation curve
        bar = tqdm(
            total=end,
            initial=position.step,
            desc=f"stage {self.cfg.stage}",
            unit="step",
            disable=not acc.is_main_process,
        )
        with DeferredTermination() as termination:
            self._train_steps(position, end, batches, bar, result, termination)
        bar.close()
        result.step = position.step
        self._close()
        return result

    def _train_steps(
        self,
        position: Position,
        end: int,
        batches,
        bar,
        result: TrainResult,
        termination: DeferredTermination,
    ) -> None:
        """Optimizer steps until `end`; on SIGTERM / SIGHUP (to any rank) the step in flight finishes, is
        checkpointed, and Terminated is raised."""
        acc, t, r = self.accelerator, self.cfg.train, self.cfg.run
        while position.step < end:
            started = time.perf_counter()
            step_losses, norm = [], None
            for micro in range(t.gradient_accumulation):
                epoch, b, batch = next(batches)
                gen = step_generator(t.seed, self.rank, position.step, micro)
                inputs = encode_batch(batch, self.codec, self.cfg, gen, self.device, self.dtype)
                check_audio_features(inputs, self.model)
                with acc.accumulate(self.net):
                    target = self.model.to_denoised(inputs.target, inputs.reference)
                    loss = denoising_loss(self.net, inputs, self.noise, self.alphas_cumprod, t, gen,
                                          self.device, target, self.model.prediction, self.reader,
                                          self.model.denoised_scale)  # fmt: skip
                    mean_loss = acc.reduce(loss.detach(), "mean").item()
                    if not math.isfinite(mean_loss):
                        self._close()
                        raise EmoError(
                            f"non-finite loss ({mean_loss}) at step {position.step + 1}: training stopped; the last "
                            f"good checkpoint is {result.last_checkpoint or 'none (none written yet)'}; resume from it "
                            "with a lower train.lr, a smaller train.max_grad_norm or train.mixed_precision=bf16, "
                            "and check the data"
                        )
                    acc.backward(loss)
                    step_losses.append(mean_loss)
                    if acc.sync_gradients:
                        norm = acc.clip_grad_norm_(
                            list(self.trainable.values()), t.max_grad_norm or float("inf")
                        )
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                position.epoch, position.batch = (
                    (epoch, b + 1) if b + 1 < self.batches_per_epoch else (epoch + 1, 0)
                )
            if not acc.sync_gradients:
                raise RuntimeError("gradient accumulation out of step with the optimizer")
            lr = self.scheduler.get_last_lr()[0]  # the rate this step used
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update(self.trainable)
            position.step += 1
            loss_value = float(np.mean(step_losses))
            result.losses[position.step] = loss_value
            self._log(position.step, loss_value, lr, norm, time.perf_counter() - started)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}")
            signum = self._termination_signal(termination)
            if position.step % r.checkpoint_every == 0 or position.step == end or signum:
                result.last_checkpoint = self.checkpoints.save(
                    position,
                    self.trainable,
                    self.ema,
                    self.optimizer,
                    self.scheduler,
                    self.cfg.stage,
                    self.cfg.components,
                )
            if signum:
                bar.close()
                self._close()
                log.warning(
                    "%s: stopped after step %d, checkpoint %s; continue with --resume auto",
                    Terminated(signum).name,
                    position.step,
                    result.last_checkpoint,
                )
                raise Terminated(signum)
            if r.validate_every and position.step % r.validate_every == 0:
                self.validate(position.step)

    def _termination_signal(self, termination: DeferredTermination) -> int:
        """The signal (or 0) any rank received: every rank must stop, and checkpoint, after the same step."""
        signum = termination.signum or 0
        if self.world > 1:
            flag = torch.tensor([signum], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            signum = int(flag.item())
        return signum

    def _open_logs(self, step: int) -> None:
        """TensorBoard writer and metrics.jsonl; after a resume, what the lost steps logged is dropped."""
        if not self.accelerator.is_main_process:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir.mkdir(parents=True, exist_ok=True)
        metrics = self.run_dir / "metrics.jsonl"
        if step and metrics.is_file():
            kept = [line for line in metrics.read_text().splitlines() if json.loads(line)["step"] <= step]
            temp = metrics.with_name(".metrics.jsonl.tmp")
            temp.write_text("".join(line + "\n" for line in kept))
            os.replace(temp, metrics)
        self.writer = SummaryWriter(str(self.run_dir / "logs"), purge_step=step + 1 if step else None)

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _log(self, step: int, loss: float, lr: float, norm, seconds: float) -> None:
        if not self.accelerator.is_main_process:
            return
        t = self.cfg.train
        samples = t.batch_size * t.gradient_accumulation * self.world
        if torch.cuda.is_available():
            memory = torch.cuda.max_memory_allocated() / 2**20
        else:
            from emo.resources import peak_rss_mib

            memory = peak_rss_mib()
        record = {
            "step": step,
            "loss": loss,
            "lr": lr,
            "grad_norm": float(norm) if norm is not None else None,
            "samples_per_s": samples / seconds,
            "step_s": seconds,
            "memory_mib": memory,
        }
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if step % self.cfg.run.log_every == 0 or step == 1:
            for key in ("loss", "lr", "grad_norm", "samples_per_s", "memory_mib"):
                if record[key] is not None:
                    self.writer.add_scalar(f"train/{key}", record[key], step)
            self.writer.flush()

    # -- checkpoints -------------------------------------------------------------------------------
    def _load_checkpoint(self, checkpoint: Path) -> Position:
        return self.checkpoints.load(
            checkpoint,
            self.model,
            self.trainable,
            self.ema,
            self.optimizer,
            self.scheduler,
            self.cfg.components,
            self.device,
        )

    # -- validation (emo.training.validation) ------------------------------------------------------
    def _fixed_inputs(self) -> FixedInputs:
        if self._validation_inputs is None:
            cfg = self.cfg
            data = (
                build_dataset(cfg, cfg.data.validation_dataset or cfg.data.dataset)
                if self._dataset is None or cfg.data.validation_dataset
                else self.dataset
            )
            self._validation_inputs = fixed_inputs(data, self.codec, cfg, self.device, self.dtype)
        return self._validation_inputs

    def validation_loss(self, points: int = 8) -> float:
        """The loss on the fixed validation inputs (see :func:`emo.training.validation.validation_loss`)."""
        return validation_loss(self.model, self._fixed_inputs().inputs, self.noise, self.accelerator,
                               self.cfg.train.seed, self.device, points)  # fmt: skip

    def validate(self, step: int) -> Path | None:
        """Denoise the fixed validation inputs with DDIM as generation does and save the video to
        `samples/step_XXXXXXXX.mp4`; its frames and the validation loss go to TensorBoard and metrics.jsonl.
        Main process only."""
        if not self.accelerator.is_main_process:
            return None
        fixed = self._fixed_inputs()
        val_loss = self.validation_loss()
        frames = sample_video(self.model, fixed.inputs, self.codec, self.accelerator, self.cfg.train.seed,
                              self.cfg.run.validation_steps, self.device, self.dtype)  # fmt: skip
        path = write_sample(self.run_dir / "samples" / f"step_{step:08d}.mp4", frames, fixed.fps)
        self.writer.add_images("validation/frames", frames, step)
        self.writer.add_scalar("validation/loss", val_loss, step)
        self.writer.flush()
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "validation_loss": val_loss, "sample": str(path)}) + "\n")
        log.info("step %d: validation loss %.4f, sample %s", step, val_loss, path)
        return path
