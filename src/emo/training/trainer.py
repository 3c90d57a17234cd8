"""The training loop of every stage, on `accelerate`: one CPU, one GPU, several GPUs or nodes, same code.

Loss (EMO paper Eq. 1): L = E[ ||ε - ε_θ(z_t, t, c)||² ] with SD1.5's DDPM schedule, optionally weighted by
min-SNR-γ (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting": w = min(SNR, γ) / SNR for
ε-prediction). Conditions are dropped for classifier-free guidance (EMO.md §3, ours): per sample, with
probabilities `drop_reference`, `drop_audio`, `drop_both` (exclusive events) the reference *latent* becomes
zeros and/or the audio *features* become zeros — exactly what generation feeds the unconditional passes.
In stages 2/3 the motion frames' features are zeroed with probability `drop_motion`, which is how the first
clip of a video is generated (no previous clip), so that case stays in the training distribution.

Determinism: the data order comes from (seed, epoch), each item from the dataset's (seed, epoch, index),
and every random draw of a micro-batch (VAE sample, noise, timesteps, dropout) from a generator seeded by
(seed, rank, step, micro-batch). A resumed run therefore repeats the uninterrupted run exactly.

Checkpoints (every `run.checkpoint_every` steps and at the end) hold only what changes: the trained
parameters (safetensors), their EMA, optimizer / LR schedule / grad-scaler state, RNG state and the data
position. They are written into a temporary directory that is renamed into place, so a checkpoint directory
is always complete; the last `run.keep_checkpoints` are kept.
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
from torch import nn

from emo.errors import EmoError
from emo.models import Conditioning
from emo.training import export as layout
from emo.training.config import StageConfig, TrainConfig
from emo.training.stages import (
    ModelInputs,
    build_dataset,
    build_model,
    check_audio_features,
    encode_batch,
    unused_parameters,
)

log = logging.getLogger(__name__)

NUM_TRAIN_TIMESTEPS = 1000
VALIDATION_STEP = 2**40  # seeds the validation inputs: a step number training never reaches


def noise_schedule():
    """SD1.5's DDPM schedule (EMO.md §2): 1000 steps, scaled-linear betas 0.00085 -> 0.012, ε-prediction."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", prediction_type="epsilon")


class TrainingModel(nn.Module):
    """EMO as one module whose forward uses every trained parameter (ReferenceNet included), so DDP and
    DeepSpeed see all of them in a single forward call (no `find_unused_parameters`)."""

    def __init__(self, emo):
        super().__init__()
        self.emo = emo

    def forward(
        self,
        noisy: torch.Tensor,  # (B, F, C, h, w)
        timesteps: torch.Tensor,  # (B,)
        reference: torch.Tensor,  # (B, C, h, w), zeros where the reference is dropped
        motion: torch.Tensor | None,  # (B, n, C, h, w)
        num_motion: int,
        keep_motion: torch.Tensor | None,  # (B,) 1 = use the motion frames, 0 = zero features (first clip)
        cond: Conditioning,
    ) -> torch.Tensor:
        features = self.emo.reference_features(reference, motion, num_motion)
        if features.motion is not None and keep_motion is not None:
            keep = keep_motion.repeat_interleave(num_motion)[:, None, None, None]  # ((B n), 1, 1, 1)
            features = type(features)(features.spatial, {k: v * keep.to(v.dtype) for k, v in features.motion.items()},
                                       num_motion)
        return self.emo(noisy, timesteps, cond, features)  # (B, F, C, h, w)


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
class Position:
    """Where training is: optimizer steps done and the next micro-batch of the data order."""

    step: int = 0
    epoch: int = 0
    batch: int = 0  # next micro-batch within the epoch


@dataclass
class TrainResult:
    run_dir: Path
    step: int  # optimizer steps done
    losses: dict[int, float] = field(default_factory=dict)  # step -> mean loss, for the steps run by this call
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


def dropout_events(u: torch.Tensor, p_reference: float, p_audio: float, p_both: float):
    """(drop reference, drop audio) per sample from one uniform draw u (B,): the three events
    "reference only", "audio only" and "both" are exclusive, with the given probabilities."""
    both = (u >= p_reference + p_audio) & (u < p_reference + p_audio + p_both)
    return (u < p_reference) | both, ((u >= p_reference) & (u < p_reference + p_audio)) | both


def min_snr_weights(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ loss weights for ε-prediction (Hang et al. 2023, Eq. 10): min(SNR(t), γ) / SNR(t), with
    SNR(t) = ᾱ_t / (1 - ᾱ_t). Down-weights the easy low-noise timesteps; 1 where SNR <= γ."""
    alpha = alphas_cumprod[timesteps]
    snr = alpha / (1 - alpha)
    return torch.clamp(snr, max=gamma) / snr


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
    wanted = {"train_micro_batch_size_per_gpu": train.batch_size,
              "gradient_accumulation_steps": train.gradient_accumulation,
              "gradient_clipping": float(train.max_grad_norm)}
    if ds_config.get("train_batch_size", "auto") != "auto":
        wanted["train_batch_size"] = train.batch_size * train.gradient_accumulation * num_processes
    changed = []
    for key, value in wanted.items():
        old = ds_config.get(key, "auto")
        if old != "auto" and old != value:
            changed.append(f"{key}: {old} -> {value}")
        ds_config[key] = value
    return changed


def step_generator(seed: int, rank: int, step: int, micro: int) -> torch.Generator:
    value = int(np.random.SeedSequence([seed, rank, step, micro]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(value)


class Trainer:
    """Trains one stage. `dataset` / `vae` may be given directly (benchmarks, tests); by default they are
    built from the config. A `model` given directly replaces `cfg.init` and is not saved as `base/`, so such
    a run can be neither resumed nor exported (benchmarks only)."""

    def __init__(self, cfg: StageConfig, dataset=None, vae=None, model=None):
        from accelerate import Accelerator

        self.cfg = cfg
        self.run_dir = Path(cfg.run.output_dir)
        self.accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision,
                                       gradient_accumulation_steps=cfg.train.gradient_accumulation)
        self.device = self.accelerator.device
        self.rank = self.accelerator.process_index
        self.world = self.accelerator.num_processes
        if cfg.train.mixed_precision == "fp16" and self.device.type == "cpu":
            # accelerate runs fp16 on a CPU with neither autocast nor loss scaling: only the inputs would be
            # half, which is neither the fp16 training asked for nor a tested path.
            raise EmoError("train.mixed_precision fp16 needs a GPU (accelerate has no fp16 autocast or grad "
                           "scaler on the CPU); on a CPU use bf16 or no")
        self.dtype = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.train.mixed_precision]
        self._dataset = dataset
        self._vae = vae
        self._model = model
        self._validation_inputs: ModelInputs | None = None

    # -- setup -------------------------------------------------------------------------------------
    def _setup(self, resume: Path | None) -> None:
        from emo.models import EMO
        from emo.models.loading import load_vae

        cfg, acc = self.cfg, self.accelerator
        # The VAE and the data first: a wrong path fails before the network is built and base/ written.
        vae = self._vae if self._vae is not None else load_vae(cfg.vae)
        self.vae = vae.to(self.device).eval().requires_grad_(False)
        if self.dtype != torch.float32:
            self.vae.to(dtype=self.dtype)
        self.dataset = self._dataset if self._dataset is not None else build_dataset(cfg)
        self.batches_per_epoch = len(self.dataset) // (cfg.train.batch_size * self.world)
        if self.batches_per_epoch == 0:
            raise EmoError(f"the dataset has {len(self.dataset)} items, fewer than one global batch "
                           f"(train.batch_size {cfg.train.batch_size} x {self.world} processes)")
        if self._model is not None:
            model = self._model
        elif resume is not None:
            model = EMO.from_pretrained(self.run_dir / layout.BASE)  # what this run started from
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
            log.warning("%d parameters of %s do not affect this stage's loss and stay frozen (e.g. %s)",
                        len(self.unused), ", ".join(cfg.components), self.unused[0])
        unused = set(self.unused)
        self.trainable = {k: p for k, p in model.named_parameters() if p.requires_grad and k not in unused}
        for k in unused:
            model.get_parameter(k).requires_grad_(False)
        trainable = list(self.trainable.values())
        log.info("training %s: %.2fM of %.2fM parameters", ", ".join(cfg.components),
                 sum(p.numel() for p in trainable) / 1e6, sum(p.numel() for p in model.parameters()) / 1e6)
        if cfg.train.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        model.train()

        t = cfg.train
        optimizer = torch.optim.AdamW(list(self.trainable.values()), lr=t.lr, betas=(t.adam_beta1, t.adam_beta2),
                                      weight_decay=t.weight_decay, eps=t.adam_eps)
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
            log.warning("accelerate was set to accumulate %d micro-batches; using train.gradient_accumulation %d",
                        acc.gradient_accumulation_steps, t.gradient_accumulation)
            acc.gradient_accumulation_steps = t.gradient_accumulation
        self.net, self.optimizer = acc.prepare(TrainingModel(model), optimizer)
        self.ema = EMA(self.trainable, t.ema_decay) if t.ema_decay is not None else None

        self.noise = noise_schedule()
        self.alphas_cumprod = self.noise.alphas_cumprod.to(self.device)
        self.writer = None

    def _write_base(self, model) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        base = self.run_dir / layout.BASE
        temp = self.run_dir / f".{layout.BASE}.tmp"
        shutil.rmtree(temp, ignore_errors=True)
        model.save_pretrained(temp)
        shutil.rmtree(base, ignore_errors=True)
        os.replace(temp, base)
        (self.run_dir / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2))

    # -- data --------------------------------------------------------------------------------------
    def _batches(self, position: Position):
        """Micro-batches for this process from `position` on, forever (epoch after epoch).

        Epoch e visits the items in torch.randperm(N, seed + e) order; micro-batch b of the epoch is the
        b-th slice of `batch_size x processes` items, this process taking its own `batch_size` of it.
        """
        cfg = self.cfg
        bs, epoch, start = cfg.train.batch_size, position.epoch, position.batch
        while True:
            order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(cfg.train.seed + epoch))
            batches = [order[(b * self.world + self.rank) * bs:(b * self.world + self.rank + 1) * bs].tolist()
                       for b in range(start, self.batches_per_epoch)]
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch)
            loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=batches, num_workers=cfg.data.num_workers)
            for b, batch in enumerate(loader, start=start):
                yield epoch, b, batch
            epoch, start = epoch + 1, 0

    # -- one micro-batch ---------------------------------------------------------------------------
    def _loss(self, inputs: ModelInputs, gen: torch.Generator) -> torch.Tensor:
        t = self.cfg.train
        target = inputs.target  # (B, F, C, h, w)
        b = target.shape[0]
        noise = torch.randn(target.shape, generator=gen)  # (B, F, C, h, w)
        if t.noise_offset:  # one offset per (video, channel): lets the model shift a clip's mean brightness
            noise = noise + t.noise_offset * torch.randn((b, 1, target.shape[2], 1, 1), generator=gen)
        noise = noise.to(self.device)
        timesteps = torch.randint(0, NUM_TRAIN_TIMESTEPS, (b,), generator=gen).to(self.device)
        noisy = self.noise.add_noise(target.float(), noise, timesteps)

        drop_ref, drop_audio = dropout_events(torch.rand(b, generator=gen), t.drop_reference, t.drop_audio,
                                              t.drop_both)
        drop_ref, drop_audio = drop_ref.to(self.device), drop_audio.to(self.device)
        reference = inputs.reference * (~drop_ref).to(inputs.reference.dtype)[:, None, None, None]
        audio = inputs.audio
        if audio is not None:
            audio = audio * (~drop_audio).to(audio.dtype)[:, None, None, None, None]
        keep_motion = None
        if inputs.motion is not None:
            keep_motion = (torch.rand(b, generator=gen) >= t.drop_motion).float().to(self.device)

        cond = Conditioning(audio=audio, speed=inputs.speed, face_mask=inputs.mask)
        eps = self.net(noisy, timesteps, reference, inputs.motion, inputs.num_motion, keep_motion, cond)
        per_sample = (eps.float() - noise).pow(2).flatten(1).mean(1)  # (B,)  EMO Eq. 1
        if t.snr_gamma is not None:
            per_sample = per_sample * min_snr_weights(self.alphas_cumprod, timesteps, t.snr_gamma)
        return per_sample.mean()

    # -- the loop ----------------------------------------------------------------------------------
    def fit(self, resume: str | Path | None = None, stop_at: int | None = None) -> TrainResult:
        """Train to `train.max_steps` (or stop after `stop_at` steps: a checkpoint is written there).

        resume: None (fresh run; an existing run directory with checkpoints is refused), "auto" (the latest
        checkpoint of `run.output_dir` if any, else fresh), or a checkpoint directory.
        """
        checkpoint = self._resolve_resume(resume)
        self._setup(checkpoint)
        position = self._load_checkpoint(checkpoint) if checkpoint is not None else Position()
        self._open_logs(position.step)
        end = min(self.cfg.train.max_steps, stop_at) if stop_at is not None else self.cfg.train.max_steps
        result = TrainResult(self.run_dir, position.step, last_checkpoint=checkpoint)
        if position.step >= end:
            log.info("nothing to do: step %d of %d reached", position.step, end)
            self._close()
            return result
        acc, t, r = self.accelerator, self.cfg.train, self.cfg.run
        batches = self._batches(position)
        from tqdm.auto import tqdm

        if checkpoint is None and r.validate_every:
            self.validate(0)  # the starting point of the validation curve
        bar = tqdm(total=end, initial=position.step, desc=f"stage {self.cfg.stage}", unit="step",
                   disable=not acc.is_main_process)
        while position.step < end:
            started = time.perf_counter()
            step_losses, norm = [], None
            for micro in range(t.gradient_accumulation):
                epoch, b, batch = next(batches)
                gen = step_generator(t.seed, self.rank, position.step, micro)
                inputs = encode_batch(batch, self.vae, self.cfg, gen, self.device, self.dtype)
                check_audio_features(inputs, self.model)
                with acc.accumulate(self.net):
                    loss = self._loss(inputs, gen)
                    mean_loss = acc.reduce(loss.detach(), "mean").item()
                    if not math.isfinite(mean_loss):
                        self._close()
                        raise EmoError(
                            f"non-finite loss ({mean_loss}) at step {position.step + 1}: training stopped; the last "
                            f"good checkpoint is {result.last_checkpoint or 'none (none written yet)'}; resume from it "
                            "with a lower train.lr, a smaller train.max_grad_norm or train.mixed_precision=bf16, "
                            "and check the data")
                    acc.backward(loss)
                    step_losses.append(mean_loss)
                    if acc.sync_gradients:
                        norm = acc.clip_grad_norm_(list(self.trainable.values()), t.max_grad_norm or float("inf"))
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                position.epoch, position.batch = (epoch, b + 1) if b + 1 < self.batches_per_epoch else (epoch + 1, 0)
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
            if position.step % r.checkpoint_every == 0 or position.step == end:
                result.last_checkpoint = self._save_checkpoint(position)
            if r.validate_every and position.step % r.validate_every == 0:
                self.validate(position.step)
        bar.close()
        result.step = position.step
        self._close()
        return result

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
        record = {"step": step, "loss": loss, "lr": lr,
                  "grad_norm": float(norm) if norm is not None else None, "samples_per_s": samples / seconds,
                  "step_s": seconds, "memory_mib": memory}
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if step % self.cfg.run.log_every == 0 or step == 1:
            for key in ("loss", "lr", "grad_norm", "samples_per_s", "memory_mib"):
                if record[key] is not None:
                    self.writer.add_scalar(f"train/{key}", record[key], step)
            self.writer.flush()

    # -- checkpoints -------------------------------------------------------------------------------
    def _resolve_resume(self, resume) -> Path | None:
        existing = layout.list_checkpoints(self.run_dir)
        if resume is None:
            if existing:
                raise EmoError(f"{self.run_dir} already has checkpoints; pass --resume auto to continue it, or "
                               "choose another run.output_dir")
            return None
        if str(resume) == "auto":
            return existing[-1] if existing else None
        checkpoint = layout.resolve_checkpoint(resume)
        if checkpoint.parent.parent.resolve() != self.run_dir.resolve():
            raise EmoError(f"--resume {resume} belongs to run {checkpoint.parent.parent}, not run.output_dir "
                           f"{self.run_dir}; set run.output_dir={checkpoint.parent.parent}")
        return checkpoint

    def _save_checkpoint(self, position: Position) -> Path:
        from safetensors.torch import save_file

        acc = self.accelerator
        root = self.run_dir / layout.CHECKPOINTS
        final = root / f"step_{position.step:08d}"
        temp = root / f".tmp-{final.name}"  # from the step alone (no pid): the same directory on every rank
        if acc.is_main_process:
            shutil.rmtree(temp, ignore_errors=True)
            temp.mkdir(parents=True)
        acc.wait_for_everyone()
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        save_file(rng, str(temp / f"rng_{self.rank}.safetensors"))
        if self._deepspeed:
            acc.save_state(str(temp / "deepspeed"))  # DeepSpeed shards the optimizer: its own format
        acc.wait_for_everyone()  # every rank's files are in temp/ before the main process renames it
        if acc.is_main_process:
            save_file({k: p.detach().cpu().contiguous() for k, p in self.trainable.items()}, str(temp / layout.TRAINABLE))
            if self.ema is not None:
                save_file({k: v.cpu().contiguous() for k, v in self.ema.shadow.items()}, str(temp / layout.EMA))
            if not self._deepspeed:
                torch.save(self.optimizer.state_dict(), temp / "optimizer.pt")
            scaler = acc.scaler.state_dict() if acc.scaler is not None else None
            state = {"step": position.step, "epoch": position.epoch, "batch": position.batch,
                     "scheduler": self.scheduler.state_dict(), "scaler": scaler, "world_size": self.world,
                     "components": self.cfg.components, "stage": self.cfg.stage}
            (temp / layout.STATE).write_text(json.dumps(state, indent=2))  # last: marks the checkpoint complete
            if final.exists():  # rerunning a step after a resume: replace the old copy
                shutil.rmtree(final)
            os.replace(temp, final)
            for old in layout.list_checkpoints(self.run_dir)[:-self.cfg.run.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
            log.info("checkpoint %s", final)
        acc.wait_for_everyone()
        return final

    @property
    def _deepspeed(self) -> bool:
        from accelerate.utils import DistributedType

        return self.accelerator.distributed_type == DistributedType.DEEPSPEED

    def _load_checkpoint(self, checkpoint: Path) -> Position:
        from safetensors.torch import load_file

        state = json.loads((checkpoint / layout.STATE).read_text())
        if sorted(state["components"]) != sorted(self.cfg.components):
            raise EmoError(f"{checkpoint} trained {', '.join(state['components'])}, the config trains "
                           f"{', '.join(self.cfg.components)}: resume with the run's own config")
        # Every rank of the saving run wrote its RNG state; one missing means the checkpoint is damaged. All
        # ranks check all files (same files, same verdict), so none is left waiting for the others.
        missing = [f"rng_{r}.safetensors" for r in range(state["world_size"])
                   if not (checkpoint / f"rng_{r}.safetensors").is_file()]
        if missing:
            raise EmoError(f"{checkpoint} is incomplete: {', '.join(missing)} missing (it was written by "
                           f"{state['world_size']} processes); resume from an earlier checkpoint")
        if state["world_size"] != self.world:
            log.warning("%s was written by %d processes, resuming on %d: the data order changes from here%s",
                        checkpoint, state["world_size"], self.world,
                        f" and ranks >= {state['world_size']} start from a fresh RNG state"
                        if self.world > state["world_size"] else "")
        layout.load_trained_parameters(self.model, load_file(str(checkpoint / layout.TRAINABLE)), checkpoint)
        if self._deepspeed:
            self.accelerator.load_state(str(checkpoint / "deepspeed"))
        else:
            self.optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", map_location="cpu",
                                                      weights_only=True))
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"] is not None and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            ema_file = checkpoint / layout.EMA
            source = load_file(str(ema_file)) if ema_file.is_file() else self.trainable
            self.ema.shadow = {k: v.detach().float().clone().to(self.device) for k, v in source.items()}
        if self.rank < state["world_size"]:
            rng = load_file(str(checkpoint / f"rng_{self.rank}.safetensors"))
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state(rng["cuda"])
        log.info("resumed from %s (step %d)", checkpoint, state["step"])
        return Position(state["step"], state["epoch"], state["batch"])

    # -- validation --------------------------------------------------------------------------------
    def _fixed_inputs(self) -> ModelInputs:
        """Item 0 (epoch 0) of the validation data, encoded once with a fixed generator."""
        if self._validation_inputs is None:
            cfg = self.cfg
            data = (build_dataset(cfg, cfg.data.validation_dataset or cfg.data.dataset)
                    if self._dataset is None or cfg.data.validation_dataset else self.dataset)
            if hasattr(data, "set_epoch"):
                data.set_epoch(0)
            batch = torch.utils.data.default_collate([data[0]])
            self._validation_inputs = encode_batch(batch, self.vae, cfg, step_generator(cfg.train.seed, 0, VALIDATION_STEP, 0),
                                                   self.device, self.dtype)
        return self._validation_inputs

    @torch.no_grad()
    def validation_loss(self, points: int = 8) -> float:
        """The loss on the fixed validation inputs at `points` timesteps spread over [0, 1000), with fixed
        noise and no condition dropout: comparable from step to step (the training loss is not)."""
        inputs = self._fixed_inputs()
        gen = torch.Generator().manual_seed(self.cfg.train.seed)
        shape = inputs.target.shape[1:]
        noise = torch.randn((points, *shape), generator=gen).to(self.device)  # (P, F, C, h, w)
        timesteps = torch.linspace(0, NUM_TRAIN_TIMESTEPS - 1, points + 2)[1:-1].round().long().to(self.device)
        target = inputs.target.float().expand(points, *shape)
        noisy = self.noise.add_noise(target, noise, timesteps)

        def repeat(x):
            return None if x is None else x.expand(points, *x.shape[1:])

        cond = Conditioning(audio=repeat(inputs.audio), speed=repeat(inputs.speed), face_mask=repeat(inputs.mask))
        self.model.eval()
        with self.accelerator.autocast():
            features = self.model.reference_features(repeat(inputs.reference), repeat(inputs.motion), inputs.num_motion)
            eps = self.model(noisy, timesteps, cond, features).float()
        self.model.train()
        return (eps - noise).pow(2).mean().item()

    @torch.no_grad()
    def validate(self, step: int) -> Path | None:
        """Denoise fixed inputs (item 0 of the validation data, fixed noise) with DDIM and save the video to
        `samples/step_XXXXXXXX.mp4`; its frames and the validation loss go to TensorBoard and metrics.jsonl.
        Main process only."""
        if not self.accelerator.is_main_process:
            return None
        from emo.media import VideoWriter
        from emo.pipeline import make_scheduler

        cfg = self.cfg
        inputs = self._fixed_inputs()
        val_loss = self.validation_loss()
        model = self.model
        model.eval()
        scheduler = make_scheduler("ddim")
        scheduler.set_timesteps(cfg.run.validation_steps, device=self.device)
        latents = torch.randn(inputs.target.shape, generator=torch.Generator().manual_seed(cfg.train.seed)).to(self.device)
        cond = Conditioning(audio=inputs.audio, speed=inputs.speed, face_mask=inputs.mask)
        with self.accelerator.autocast():
            features = model.reference_features(inputs.reference, inputs.motion, inputs.num_motion)
            for t in scheduler.timesteps:
                eps = model(latents, t.reshape(1).to(self.device), cond, features).float()
                latents = scheduler.step(eps, t, latents).prev_sample
            pixels = self.vae.decode(latents[0].to(self.dtype) / self.vae.config.scaling_factor).sample  # (F, 3, H, W)
        model.train()
        frames = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()  # (F, 3, H, W)
        path = self.run_dir / "samples" / f"step_{step:08d}.mp4"
        with VideoWriter(path, fps=30.0, width=frames.shape[-1], height=frames.shape[-2], overwrite=True,
                         preset="veryfast") as writer:
            for frame in frames.permute(0, 2, 3, 1).numpy():
                writer.write(frame)
        self.writer.add_images("validation/frames", frames, step)
        self.writer.add_scalar("validation/loss", val_loss, step)
        self.writer.flush()
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "validation_loss": val_loss, "sample": str(path)}) + "\n")
        log.info("step %d: validation loss %.4f, sample %s", step, val_loss, path)
        return path
