"""Sampling: SD1.5's noise schedule, the samplers built on it, and classifier-free guidance (EMO.md §2, §5).

The one home of the schedule: training noises latents with :func:`training_schedule`, generation and the
trainer's validation samples denoise with :func:`sample` over a scheduler from :func:`make_scheduler`. A
sampler here is a plain function over a *denoiser* ``(latents, t) -> ε`` (k-diffusion style), so the
network, its conditions and guidance stay with the caller.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from emo.errors import EmoError

NUM_TRAIN_TIMESTEPS = 1000
# SD1.5's DDPM schedule (EMO paper Eq. 1): scaled-linear betas 0.00085 -> 0.012.
SCHEDULE = dict(
    num_train_timesteps=NUM_TRAIN_TIMESTEPS,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
)
SAMPLERS = ("ddim", "dpm++")
# What the network predicts: ε (SD1.5 and the paper) or v = α·ε − σ·x0 (Salimans & Ho 2022). With v, the
# clean latents are α·x_t − σ·v: near t = 0 the input passes through (σ -> 0) and near t = T the network
# only has to give the (small) clean latents, where ε-prediction must copy the input's noise exactly and
# divides its error by α_T ≈ 0.07. A narrow UNet with 32 latent channels (the small model) cannot.
# The options are emo.config.PREDICTIONS.

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (latents, t) -> ε or v, float32


def training_schedule() -> DDPMScheduler:
    """The schedule training noises with (``add_noise``, ``alphas_cumprod`` for min-SNR weights)."""
    return DDPMScheduler(**SCHEDULE)


def prediction_target(
    schedule: DDPMScheduler,
    clean: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    prediction: str,
) -> torch.Tensor:
    """What a network predicting ``prediction`` should output for ``clean`` noised with ``noise`` at
    ``timesteps`` (B,) of the training ``schedule``: ε itself, or v = sqrt(ᾱ_t)·ε − sqrt(1 - ᾱ_t)·x0."""
    if prediction == "epsilon":
        return noise
    return schedule.get_velocity(clean, noise, timesteps)


def make_scheduler(sampler: str, prediction: str = "epsilon"):
    """SD1.5's schedule with the chosen sampler: DDIM (the paper's) or DPM-Solver++ 2M (fewer steps)."""
    inference = dict(SCHEDULE, prediction_type=prediction, steps_offset=1, timestep_spacing="leading")
    if sampler == "ddim":
        return DDIMScheduler(**inference, clip_sample=False, set_alpha_to_one=False)
    if sampler == "dpm++":
        return DPMSolverMultistepScheduler(**inference, algorithm_type="dpmsolver++", solver_order=2)
    raise EmoError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")


def steps_run(steps: int, strength: float) -> int:
    """How many of ``steps`` a sample at ``strength`` runs (the last ones of the schedule)."""
    return steps if strength >= 1.0 else max(1, round(steps * strength))


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    noise: torch.Tensor,
    sampler: str = "ddim",
    steps: int = 40,
    callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    start: torch.Tensor | None = None,
    strength: float = 1.0,
    prediction: str = "epsilon",
) -> torch.Tensor:
    """Denoise ``noise`` (unit Gaussian, any shape the denoiser takes) in ``steps`` steps -> clean latents.

    ``strength`` < 1 starts from ``start`` (clean latents broadcastable to ``noise``) noised to that point of
    the schedule and runs only the last ``strength`` share of the steps (SDEdit / img2img): the layout comes
    from ``start``, the detail from the model. 1.0 starts from pure noise (the paper).
    ``callback(step_index, t, latents)`` runs after each step (progress bars, tests). ``prediction``: what
    the denoiser returns (``emo.config.PREDICTIONS``).
    """
    scheduler = make_scheduler(sampler, prediction)
    scheduler.set_timesteps(steps, device=noise.device)
    timesteps = scheduler.timesteps
    if strength < 1.0:
        if start is None:
            raise ValueError("strength < 1 needs the start latents")
        skip = steps - steps_run(steps, strength)
        timesteps = timesteps[skip:]
        if hasattr(scheduler, "set_begin_index"):  # multistep solvers index their own history
            scheduler.set_begin_index(skip)
        latents = scheduler.add_noise(start.expand_as(noise).to(noise), noise, timesteps[:1])
    else:
        latents = noise * scheduler.init_noise_sigma
    for i, t in enumerate(timesteps):
        output = denoiser(scheduler.scale_model_input(latents, t), t)
        latents = scheduler.step(output, t, latents).prev_sample
        if callback is not None:
            callback(i, t, latents)
    return latents


# -- classifier-free guidance (EMO.md §3, ours) ------------------------------------------------------------
Pass = tuple[bool, bool]  # (reference on, audio on)


def guidance_plan(
    reference_scale: float, audio_scale: float, audio_region: torch.Tensor | None = None
) -> tuple[list[Pass], list[float | torch.Tensor]]:
    """Which (reference on, audio on) passes to batch, and how to combine their predictions.

    eps = e(0,0) + s_ref (e(1,0) - e(0,0)) + s_audio (e(1,1) - e(1,0)); passes whose weight would cancel are
    skipped, so guidance at 1.0 costs nothing. ``audio_region``: an (h, w) map in [0, 1] of where the audio scale
    applies; elsewhere it is 1.0 (the audio as trained), and the weights are (h, w) maps.
    """
    s_audio = audio_scale if audio_region is None else 1.0 + (audio_scale - 1.0) * audio_region
    if reference_scale == 1.0 and audio_scale == 1.0:
        return [(True, True)], [1.0]
    if reference_scale == 1.0:
        return [(True, False), (True, True)], [1.0 - s_audio, s_audio]
    if audio_scale == 1.0:
        return [(False, True), (True, True)], [1.0 - reference_scale, reference_scale]
    return (
        [(False, False), (True, False), (True, True)],
        [1.0 - reference_scale, reference_scale - s_audio, s_audio],
    )


def combine_guidance(eps: torch.Tensor, weights: list[float | torch.Tensor]) -> torch.Tensor:
    """(P·B, ..., h, w) predictions of the plan's P passes, batched in plan order -> the guided (B, ..., h, w)
    one."""
    return sum(w * e for w, e in zip(weights, eps.chunk(len(weights)), strict=True))
