"""The mouth guide (emo.conditioning.mouth): fitted on a dataset, it steers sampling to the audio's opening."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from emo.conditioning.mouth import (
    GRID,
    MOUTH_GUIDE,
    AudioReader,
    MouthGuide,
    MouthReader,
    mouth_crops,
)
from emo.errors import EmoError
from emo.eval.mouth import pearson
from emo.sampling import edit_clean, training_schedule
from emo.training.mouth_reading import clip_audio, clip_openings, clips_of, fit_mouth_guide
from mouth_helpers import add_audio, write_dataset

BOX = torch.tensor([0.4, 0.55, 0.65, 0.75])


def random_guide(channels: int = 4, seed: int = 0) -> MouthGuide:
    g = torch.Generator().manual_seed(seed)
    n = channels * GRID * GRID
    reader = MouthReader(torch.randn(n, generator=g), 0.1)
    audio = AudioReader(torch.zeros(5 * 2 * 3), torch.ones(5 * 2 * 3), torch.randn(30, generator=g), 0.0, 2)
    return MouthGuide(reader, torch.randn(n, generator=g), audio, 1.5)


def read(guide: MouthGuide, frames: torch.Tensor) -> torch.Tensor:
    b, f = frames.shape[:2]
    return guide.reader.read(mouth_crops(frames.flatten(0, 1), BOX.expand(b * f, 4))).reshape(b, f)


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_steering_moves_the_read_opening_that_far_and_touches_nothing_outside_the_mouth(strength):
    guide = random_guide()
    frames = torch.randn(2, 3, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([-1.0, 0.0, 2.0])
    moved = guide.steer(frames, BOX, targets, strength)
    before, after = read(guide, frames), read(guide, moved)
    assert torch.allclose(after, before + strength * (targets - before), atol=1e-4)
    changed = (moved - frames).abs().amax((0, 1, 2)) > 0  # (h, w): where any latent moved
    rows, cols = torch.nonzero(changed, as_tuple=True)
    # The crop spans SIDE box widths around the box's centre (8.4, 10.4 in latents): bilinear taps stay near it.
    assert 4 <= rows.min() and rows.max() <= 13 and 4 <= cols.min() and cols.max() <= 12
    assert not changed[:3].any() and not changed[:, :3].any()


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_edit_clean_makes_the_sampler_step_to_the_edited_clean_latents(prediction):
    alphas = training_schedule().alphas_cumprod
    g = torch.Generator().manual_seed(0)
    latents, output = torch.randn(1, 2, 4, 4, 4, generator=g), torch.randn(1, 2, 4, 4, 4, generator=g)
    t = torch.tensor(600)
    a, s = alphas[600].sqrt(), (1 - alphas[600]).sqrt()

    def implied(out):
        return (latents - s * out) / a if prediction == "epsilon" else a * latents - s * out

    net = lambda x, step: output  # noqa: E731
    same = edit_clean(net, prediction, lambda x0, step: x0)(latents, t)
    assert torch.allclose(same, output, atol=1e-5)
    shifted = edit_clean(net, prediction, lambda x0, step: x0 + 0.25)(latents, t)
    assert torch.allclose(implied(shifted), implied(output) + 0.25, atol=1e-4)


def test_a_fitted_guide_hears_openings_it_never_saw_and_round_trips(tmp_path):
    for name, seed in (("train", 0), ("held_out", 1)):
        write_dataset(tmp_path / name, clips=3, seed=seed)
        add_audio(tmp_path / name, seed)
    guide, fit = fit_mouth_guide(tmp_path / "train", half_window=1, audio_ridge=10.0)
    assert fit["r"] > 0.95 and fit["audio r"] > 0.9 and fit["gain"] >= 1.0
    # The direction: the planted pattern (channel 0 at the mouth) grows with the opening.
    direction = guide.direction.reshape(4, GRID * GRID)
    assert direction[0].abs().sum() > 5 * direction[1:].abs().sum() / 3
    for clip in clips_of(tmp_path / "held_out"):
        opening = clip_openings(clip)
        ok = np.isfinite(opening)
        assert pearson(guide.audio.read_track(clip_audio(clip)).numpy()[ok], opening[ok]) > 0.9
    guide.save(tmp_path / MOUTH_GUIDE)
    again = MouthGuide.load(tmp_path / MOUTH_GUIDE, latent_channels=4)
    features = clip_audio(clips_of(tmp_path / "held_out")[0])
    from emo.conditioning.windows import window

    windows = window(features, 1)
    assert torch.allclose(again.openings(windows), guide.openings(windows), atol=1e-5)
    assert torch.equal(again.direction, guide.direction) and again.gain == pytest.approx(guide.gain)


def test_bad_guide_files_are_clear_errors(tmp_path):
    with pytest.raises(
        EmoError, match="no mouth guide there; make one with `python scripts/fit_mouth_guide.py"
    ):
        MouthGuide.load(tmp_path / "nope.safetensors")
    save_file({"weight": torch.zeros(3)}, str(tmp_path / "reader.safetensors"))
    with pytest.raises(EmoError, match="not a mouth guide"):
        MouthGuide.load(tmp_path / "reader.safetensors")
    random_guide(channels=32).save(tmp_path / MOUTH_GUIDE)
    with pytest.raises(EmoError, match="reads latents of 32 channels, the network's have 4"):
        MouthGuide.load(tmp_path / MOUTH_GUIDE, latent_channels=4)
    guide = MouthGuide.load(tmp_path / MOUTH_GUIDE, latent_channels=32)
    guide.check_features(tmp_path / MOUTH_GUIDE, 2, 3)  # fitted on 5 x 2 x 3 windows
    with pytest.raises(EmoError, match="fitted on audio features of another shape than this model's"):
        guide.check_features(tmp_path / MOUTH_GUIDE, 13, 768)


# -- generation --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_pipe():
    from emo.generation.pipeline import EMOPipeline

    return EMOPipeline.tiny()


def fast_options():
    from emo.generation.pipeline import GenerationOptions

    return GenerationOptions(steps=3, size=64, clip_frames=4, motion_frames=2, fps=10.0, sampler="ddim")


def guide_for(pipe, seed: int = 0) -> MouthGuide:
    """A guide for the tiny pipeline's latents and audio features, with the audio reader's weights random."""
    proj = pipe.model.audio_projector.config
    channels = pipe.codec.latent_channels
    n = (2 * 2 + 1) * proj.num_layers * proj.feature_dim
    g = torch.Generator().manual_seed(seed)
    reader = MouthReader(torch.randn(channels * GRID * GRID, generator=g), 0.0)
    audio = AudioReader(torch.zeros(n), torch.ones(n), torch.randn(n, generator=g), 0.0, 2)
    return MouthGuide(reader, torch.randn(channels * GRID * GRID, generator=g), audio, 1.0)


def denoise(pipe, opts, mouth):
    """One clip of the tiny pipeline, fixed noise and conditions, with or without the mouth steered."""
    g = torch.Generator().manual_seed(0)
    c, size = pipe.codec.latent_channels, opts.size // 8
    proj = pipe.model.audio_projector.config
    noise = torch.randn(1, opts.clip_frames, c, size, size, generator=g)
    audio = torch.randn(1, opts.clip_frames, 5, proj.num_layers, proj.feature_dim, generator=g)
    speed = pipe.speed_window(opts.clip_frames, 0.5)[None]
    mask = torch.ones(1, 1, opts.size, opts.size)
    reference = torch.randn(1, c, size, size, generator=g)
    return pipe.denoise_clip(noise, audio, speed, mask, reference, None, opts, mouth=mouth)


def test_the_sampled_frames_open_their_mouths_as_the_guide_says(tiny_pipe):
    opts = fast_options()
    tiny_pipe.mouth_guide = guide_for(tiny_pipe)
    try:
        free = denoise(tiny_pipe, opts, None)
        free_read = read(tiny_pipe.mouth_guide, free)[0]
        for targets in (torch.tensor([-2.0, 0.0, 1.0, 3.0]), torch.tensor([6.0, 6.0, -5.0, -5.0])):
            steered = denoise(tiny_pipe, opts, (BOX, targets, 1.0))
            got = read(tiny_pipe.mouth_guide, steered)[0]
            # DDIM's last step keeps a trace of the predicted noise (alpha_bar_0 < 1): near the targets, not on
            # them; the random network's own mouths read elsewhere.
            assert (got - targets).abs().max() < 0.6, (got, targets)
            assert (free_read - targets).abs().mean() > 4 * (got - targets).abs().mean(), (free_read, got)
    finally:
        tiny_pipe.mouth_guide = None


def test_mouth_guidance_needs_a_guide_and_a_valid_strength(tiny_pipe, tmp_path):
    from emo.generation.pipeline import GenerationOptions

    with pytest.raises(EmoError, match="--mouth-guidance must be in \\[0, 1\\], got 1.5"):
        GenerationOptions(mouth_guidance=1.5).validate()
    portrait = type("P", (), {"mouth_box": np.array([0.4, 0.6, 0.6, 0.7])})()
    opts = fast_options()
    with pytest.raises(EmoError, match="this model has no mouth guide"):
        tiny_pipe.mouth_strength(replace(opts, mouth_guidance=0.5), portrait)
    assert tiny_pipe.mouth_strength(opts, portrait) == 0.0  # no guide, not asked for: off
    tiny_pipe.mouth_guide = guide_for(tiny_pipe)
    try:
        assert tiny_pipe.mouth_strength(opts, portrait) == 1.0
        assert tiny_pipe.mouth_strength(replace(opts, mouth_guidance=0.0), portrait) == 0.0
        assert tiny_pipe.mouth_strength(replace(opts, mouth_guidance=0.3), portrait) == 0.3
    finally:
        tiny_pipe.mouth_guide = None
