"""Validation during training: a fixed held-out input, its loss at fixed noise and timesteps (comparable from
step to step, unlike the training loss), and a sample video made as `emo generate` makes one (the same
`emo.sampling.sample`, the same codec)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from emo.codec import LatentCodec, to_uint8_frames
from emo.data.dataset_config import PreprocessConfig
from emo.media import VideoWriter
from emo.models import Conditioning
from emo.sampling import NUM_TRAIN_TIMESTEPS, prediction_target, sample
from emo.training.config import StageConfig
from emo.training.loss import step_generator
from emo.training.stages import ModelInputs, encode_batch

VALIDATION_STEP = 2**40  # seeds the validation inputs: a step number training never reaches


@dataclass
class FixedInputs:
    inputs: ModelInputs  # item 0 (epoch 0) of the validation data, encoded once
    fps: float  # the frame rate of the clip it comes from (the sample video plays at it)


def fixed_inputs(data, codec: LatentCodec, cfg: StageConfig, device, dtype) -> FixedInputs:
    """Item 0 (epoch 0) of ``data``, encoded once with a fixed generator."""
    if hasattr(data, "set_epoch"):
        data.set_epoch(0)
    batch = torch.utils.data.default_collate([data[0]])
    # Datasets given directly, such as the benchmarks' synthetic clips, have no clips: the preprocessing default.
    clips = getattr(data, "clips", None)
    fps = float(clips[0]["fps"]) if clips else PreprocessConfig().fps
    generator = step_generator(cfg.train.seed, 0, VALIDATION_STEP, 0)
    return FixedInputs(encode_batch(batch, codec, cfg, generator, device, dtype), fps)


@torch.no_grad()
def validation_loss(
    model, inputs: ModelInputs, schedule, accelerator, seed: int, device, points: int = 8
) -> float:
    """The MSE of the network's prediction (ε or v) on ``inputs`` at ``points`` timesteps spread over [0, 1000), with fixed noise and no
    condition dropout."""
    gen = torch.Generator().manual_seed(seed)
    shape = inputs.target.shape[1:]
    noise = torch.randn((points, *shape), generator=gen).to(device)  # (P, F, C, h, w)
    timesteps = torch.linspace(0, NUM_TRAIN_TIMESTEPS - 1, points + 2)[1:-1].round().long().to(device)
    target = model.to_denoised(inputs.target.float(), inputs.reference.float()).expand(points, *shape)
    noisy = schedule.add_noise(target, noise, timesteps)

    def repeat(x):
        return None if x is None else x.expand(points, *x.shape[1:])

    cond = Conditioning(audio=repeat(inputs.audio), speed=repeat(inputs.speed), face_mask=repeat(inputs.mask))
    model.eval()
    with accelerator.autocast():
        features = model.reference_features(
            repeat(inputs.reference), repeat(inputs.motion), inputs.num_motion
        )
        eps = model(noisy, timesteps, cond, features).float()
    model.train()
    return (
        (eps - prediction_target(schedule, target, noise, timesteps, model.prediction)).pow(2).mean().item()
    )


@torch.no_grad()
def sample_video(model, inputs: ModelInputs, codec: LatentCodec, accelerator, seed: int, steps: int, device,
                 dtype) -> torch.Tensor:  # fmt: skip
    """DDIM from fixed noise on ``inputs`` -> (F, 3, H, W) uint8 frames."""
    model.eval()
    noise = torch.randn(inputs.target.shape, generator=torch.Generator().manual_seed(seed)).to(device)
    cond = Conditioning(audio=inputs.audio, speed=inputs.speed, face_mask=inputs.mask)
    with accelerator.autocast():
        features = model.reference_features(inputs.reference, inputs.motion, inputs.num_motion)
        denoised = sample(
            lambda x, t: model(x, t.reshape(1).to(device), cond, features).float(),
            noise,
            "ddim",
            steps,
            prediction=model.prediction,
        )
        latents = model.from_denoised(denoised, inputs.reference.float())
        pixels = codec.decode(latents[0].to(dtype))  # (F, 3, H, W)
    model.train()
    return to_uint8_frames(pixels).cpu()  # (F, 3, H, W)


def write_sample(path: Path, frames: torch.Tensor, fps: float) -> Path:
    """(F, 3, H, W) uint8 frames -> an mp4 at ``fps`` (replacing an older sample of the same step)."""
    with VideoWriter(path, fps=fps, width=frames.shape[-1], height=frames.shape[-2], overwrite=True,
                     preset="veryfast") as writer:  # fmt: skip
        for frame in frames.permute(0, 2, 3, 1).numpy():
            writer.write(frame)
    return path
