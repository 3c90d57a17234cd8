"""The training loss (EMO paper Eq. 1): L = E[ ||ε - ε_θ(z_t, t, c)||² ] with SD1.5's DDPM schedule (or the same
with v in place of ε, for a network that predicts v: emo.sampling), optionally with the mouth weighted more.

Optionally weighted by min-SNR-γ (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting":
w = min(SNR, γ) / SNR for ε-prediction). Conditions are dropped for classifier-free guidance (EMO.md §3, ours):
per sample, with probabilities `drop_reference`, `drop_audio`, `drop_both` (exclusive events) the reference
*latent* becomes zeros and/or the audio *features* become zeros — exactly what generation feeds the
unconditional passes. In stages 2/3 the motion frames' features are zeroed with probability `drop_motion`,
which is how the first clip of a video is generated (no previous clip), so that case stays in the training
distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from emo.conditioning.mouth import MouthReader
from emo.models import Conditioning
from emo.sampling import NUM_TRAIN_TIMESTEPS, prediction_target
from emo.training.config import TrainConfig
from emo.training.mouth_reading import reading_error
from emo.training.stages import ModelInputs


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
            features = type(features)(
                features.spatial, {k: v * keep.to(v.dtype) for k, v in features.motion.items()}, num_motion
            )
        return self.emo(noisy, timesteps, cond, features)  # (B, F, C, h, w)


def dropout_events(u: torch.Tensor, p_reference: float, p_audio: float, p_both: float):
    """(drop reference, drop audio) per sample from one uniform draw u (B,): the three events
    "reference only", "audio only" and "both" are exclusive, with the given probabilities."""
    both = (u >= p_reference + p_audio) & (u < p_reference + p_audio + p_both)
    return (u < p_reference) | both, ((u >= p_reference) & (u < p_reference + p_audio)) | both


def min_snr_weights(
    alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float, prediction: str = "epsilon"
) -> torch.Tensor:
    """Min-SNR-γ loss weights (Hang et al. 2023, Eq. 10), with SNR(t) = ᾱ_t / (1 - ᾱ_t): min(SNR, γ) / SNR for
    ε-prediction (1 where SNR <= γ; down-weights the easy low-noise timesteps), min(SNR, γ) / (SNR + 1) for v."""
    alpha = alphas_cumprod[timesteps]
    snr = alpha / (1 - alpha)
    return torch.clamp(snr, max=gamma) / (snr if prediction == "epsilon" else snr + 1)


def box_mask(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, F, 4) boxes x0, y0, x1, y1 (fractions of the frame) -> (B, F, 1, height, width): 1.0 on the latents
    whose centre lies in the box, 0.0 elsewhere."""
    ys = (torch.arange(height, device=boxes.device) + 0.5) / height  # latent centres
    xs = (torch.arange(width, device=boxes.device) + 0.5) / width
    x0, y0, x1, y1 = (boxes[..., i, None, None] for i in range(4))  # (B, F, 1, 1)
    inside = (ys[:, None] >= y0) & (ys[:, None] <= y1) & (xs >= x0) & (xs <= x1)  # (B, F, h, w)
    return inside.float()[:, :, None]


def box_weights(boxes: torch.Tensor, height: int, width: int, extra: float) -> torch.Tensor:
    """(B, F, 4) boxes -> (B, F, 1, height, width) loss weights: 1 + extra in the box (`box_mask`), 1 elsewhere."""
    return 1 + extra * box_mask(boxes, height, width)


# The audio contrast asks the mouth's error with another sample's audio to exceed the error with the sample's own
# audio by this fraction; only at the noisier half of the timesteps, where the mouth cannot be read from z_t, so
# the network cannot meet it by spotting a mismatch between the audio and the mouth it sees.
AUDIO_CONTRAST_MARGIN = 0.1


@dataclass
class NoisedBatch:
    """One micro-batch made ready for the network: the noised target, the conditions after dropout, and what
    the network should output."""

    noisy: torch.Tensor  # (B, F, C, h, w)
    timesteps: torch.Tensor  # (B,)
    reference: torch.Tensor  # (B, C, h, w), zeros where dropped
    audio: torch.Tensor | None  # (B, F, 2m+1, L, D), zeros where dropped
    keep_motion: torch.Tensor | None  # (B,)
    dropped_audio: torch.Tensor  # (B,) bool
    wanted: torch.Tensor  # (B, F, C, h, w) ε or v


def noised_batch(
    inputs: ModelInputs,
    schedule,
    t: TrainConfig,
    gen: torch.Generator,
    device,
    target: torch.Tensor | None = None,
    prediction: str = "epsilon",
) -> NoisedBatch:
    """Every random draw of EMO Eq. 1 for one micro-batch (noise, timesteps, condition dropout), from ``gen``."""
    target = inputs.target if target is None else target  # (B, F, C, h, w)
    b = target.shape[0]
    noise = torch.randn(target.shape, generator=gen)  # (B, F, C, h, w)
    if t.noise_offset:  # one offset per (video, channel): lets the model shift a clip's mean brightness
        noise = noise + t.noise_offset * torch.randn((b, 1, target.shape[2], 1, 1), generator=gen)
    noise = noise.to(device)
    timesteps = torch.randint(t.min_timestep, NUM_TRAIN_TIMESTEPS, (b,), generator=gen).to(device)
    noisy = schedule.add_noise(target.float(), noise, timesteps)

    drop_ref, drop_audio = dropout_events(
        torch.rand(b, generator=gen), t.drop_reference, t.drop_audio, t.drop_both
    )
    drop_ref, drop_audio = drop_ref.to(device), drop_audio.to(device)
    reference = inputs.reference * (~drop_ref).to(inputs.reference.dtype)[:, None, None, None]
    audio = inputs.audio
    if audio is not None:
        audio = audio * (~drop_audio).to(audio.dtype)[:, None, None, None, None]
    keep_motion = None
    if inputs.motion is not None:
        keep_motion = (torch.rand(b, generator=gen) >= t.drop_motion).float().to(device)
    wanted = prediction_target(schedule, target.float(), noise, timesteps, prediction)  # ε, or v
    return NoisedBatch(noisy, timesteps, reference, audio, keep_motion, drop_audio, wanted)


def predict(
    net: nn.Module, inputs: ModelInputs, batch: NoisedBatch, audio: torch.Tensor | None
) -> torch.Tensor:
    """The network's output for a noised batch, driven by ``audio`` (the batch's own, or another)."""
    cond = Conditioning(audio=audio, speed=inputs.speed, face_mask=inputs.mask)
    return net(batch.noisy, batch.timesteps, batch.reference, inputs.motion, inputs.num_motion, batch.keep_motion,
               cond).float()  # fmt: skip


def mouth_error(error: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(B, F, C, h, w) squared error, (B, F, 4) mouth boxes -> (B,) the mean error over the mouth's latents."""
    inside = box_mask(boxes, *error.shape[-2:]).expand_as(error)
    return (error * inside).flatten(1).sum(1) / inside.flatten(1).sum(1).clamp_min(1)


def denoising_loss(
    net: nn.Module,
    inputs: ModelInputs,
    schedule,
    alphas_cumprod: torch.Tensor,
    t: TrainConfig,
    gen: torch.Generator,
    device,
    target: torch.Tensor | None = None,
    prediction: str = "epsilon",
    reader: MouthReader | None = None,
    denoised_scale: float = 1.0,
) -> torch.Tensor:
    """EMO Eq. 1 on one micro-batch. ``net`` is the (accelerate-prepared) :class:`TrainingModel`; every
    random draw (noise, timesteps, condition dropout) comes from ``gen``. ``target`` is what the network
    denoises (``EMO.to_denoised``; the frame latents by default), ``prediction`` what it outputs (ε or v).

    With ``t.audio_contrast`` > 0 (ours, not the paper's), the batch is run a second time with each sample's
    audio swapped for the next sample's, and a hinge asks the mouth's error to be at least
    AUDIO_CONTRAST_MARGIN higher with the other audio than with its own: a network that ignores the audio
    pays ``audio_contrast`` x the margin.

    With ``t.mouth_reading`` > 0 (ours), the x0 error is read through the mouth ``reader``
    (:mod:`emo.training.mouth_reading`), and the squared error of the mouth's opening is added at that weight.
    ``denoised_scale`` is how much larger the denoised latents are than the frame latents (the residual's
    scale; 1 when the network denoises the frames)."""
    batch = noised_batch(inputs, schedule, t, gen, device, target, prediction)
    output = predict(net, inputs, batch, batch.audio)
    difference = output - batch.wanted
    raw_error = difference.pow(2)  # (B, F, C, h, w)
    error = raw_error
    if t.mouth_weight and inputs.mouth is not None:
        error = error * box_weights(inputs.mouth, *error.shape[-2:], t.mouth_weight)
    per_sample = error.flatten(1).mean(1)  # (B,)  EMO Eq. 1
    if t.snr_gamma is not None:
        per_sample = per_sample * min_snr_weights(alphas_cumprod, batch.timesteps, t.snr_gamma, prediction)
    loss = per_sample.mean()
    if t.audio_contrast and batch.audio is not None and inputs.mouth is not None and len(output) > 1:
        loss = loss + t.audio_contrast * audio_contrast(net, inputs, batch, raw_error)
    if t.mouth_reading and reader is not None and inputs.mouth is not None:
        latent_error = x0_error(difference, alphas_cumprod, batch.timesteps, prediction) / denoised_scale
        # where the audio was dropped the opening cannot be known: the reading does not count there
        loss = loss + t.mouth_reading * reading_error(
            latent_error, inputs.mouth, reader, ~batch.dropped_audio
        )
    return loss


def x0_error(
    difference: torch.Tensor, alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, prediction: str
) -> torch.Tensor:
    """(B, ...) error of the network's ε or v -> the error of the x0 it implies at those timesteps:
    x0 = (z_t - σ ε) / α, so -σ/α times the ε error; x0 = α z_t - σ v, so -σ times the v error."""
    alpha_bar = alphas_cumprod.to(difference.device)[timesteps].float()
    sigma, alpha = (1 - alpha_bar).sqrt(), alpha_bar.sqrt()
    scale = -sigma / alpha if prediction == "epsilon" else -sigma
    return scale.view(-1, *[1] * (difference.dim() - 1)) * difference


def audio_contrast(net: nn.Module, inputs: ModelInputs, batch: NoisedBatch, own_error: torch.Tensor):
    """The hinge of ``denoising_loss``'s audio contrast, averaged over the whole batch (0 where it does not
    apply: the audio of the sample or of its partner dropped, or a timestep in the less noisy half)."""
    applies = ~batch.dropped_audio & ~batch.dropped_audio.roll(1, dims=0)
    applies = applies & (batch.timesteps >= NUM_TRAIN_TIMESTEPS // 2)
    if not applies.any():  # spare the second pass (a quarter of the batches of two)
        return own_error.new_zeros(())
    other_audio = batch.audio.roll(1, dims=0)  # sample i hears sample i-1's audio
    other_error = (predict(net, inputs, batch, other_audio) - batch.wanted).pow(2)
    own, other = mouth_error(own_error, inputs.mouth), mouth_error(other_error, inputs.mouth)
    hinge = torch.relu(AUDIO_CONTRAST_MARGIN - (other - own) / own.detach().clamp_min(1e-6))
    return (hinge * applies.float()).mean()


def step_generator(seed: int, rank: int, step: int, micro: int) -> torch.Generator:
    """The generator of every random draw of one micro-batch (codec sample, noise, timesteps, dropout): a
    function of (seed, rank, step, micro-batch) alone, so a resumed run draws what the uninterrupted one did."""
    value = int(np.random.SeedSequence([seed, rank, step, micro]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(value)
