"""The mouth guide (emo.conditioning.mouth): fitted on a dataset, it steers sampling to the audio's opening."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

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
    open_mouth,
)
from emo.errors import EmoError
from emo.eval.mouth import pearson
from emo.training.mouth_reading import (
    clip_audio,
    clip_openings,
    clips_of,
    fit_mouth_guide,
    own_and_swapped_r,
)
from mouth_helpers import add_audio, write_dataset

BOX = torch.tensor([0.4, 0.55, 0.65, 0.75])


def random_guide(channels: int = 4, seed: int = 0) -> MouthGuide:
    g = torch.Generator().manual_seed(seed)
    reader = MouthReader(torch.randn(channels * GRID * GRID, generator=g), 0.1)
    audio = AudioReader(torch.zeros(5 * 2 * 3), torch.ones(5 * 2 * 3), torch.randn(30, generator=g), 0.0, 2)
    return MouthGuide(reader, audio, 1.5, 0.1, 0.9)


def lips() -> torch.Tensor:
    """(1, 3, 64, 64) a face-coloured frame with dark lip edges meeting at row 32 (BOX's middle is 41.6)."""
    image = torch.full((1, 3, 64, 64), 0.4)
    image[:, :, 36:41] = -0.2  # the upper lip
    image[:, :, 42:47] = -0.2  # the lower lip
    return image


def test_open_mouth_parts_the_lips_by_the_gap_and_draws_the_inside():
    image = lips()
    assert torch.allclose(open_mouth(image, BOX, torch.tensor([0.0])), image, atol=1e-5)
    opened = open_mouth(image, BOX, torch.tensor([4.0]))[0]
    centre = 33  # the box's middle column (x 0.4..0.65 of 64: 25.6..41.6)
    column, before = opened[0, :, centre], image[0, 0, :, centre]
    # Above the lip line nothing moves; below it the lower lip comes 4 rows later, the inside dark between.
    assert torch.equal(column[:41], before[:41])
    assert (column[42:45] < -0.3).all()  # the inside (MOUTH_INSIDE, red -0.55): darker than the lips (-0.2)
    assert torch.allclose(column[46:49], before[42:45], atol=1e-4)
    # Outside the box's columns, and far below the chin, nothing moves.
    assert torch.equal(opened[:, :, :25], image[0, :, :, :25]) and torch.equal(
        opened[:, 62:], image[0, :, 62:]
    )
    closed = open_mouth(image, BOX, torch.tensor([-2.0]))[0]
    # Closing: the lower lip moved up by 2 rows, so it ends 2 rows sooner; nothing dark is drawn.
    assert image[0, 0, 45, centre] < 0 < closed[0, 45, centre] and not (closed < -0.3).any()


def test_lip_gaps_part_the_lips_by_the_read_difference_in_pixels():
    guide = random_guide()
    latents = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    current = guide.reader.read(mouth_crops(latents, BOX.expand(3, 4)))
    targets = current + torch.tensor([0.0, 1.0, -2.0])
    gaps = guide.lip_gaps(latents, BOX, targets, 0.5, 128)
    # half the way x 0.1 opening per standard deviation x the eyes (0.9 of the box's 0.25 x 128 px)
    per_unit = 0.1 * 0.9 * 0.25 * 128
    assert torch.allclose(gaps, torch.tensor([0.0, 0.5, -1.0]) * per_unit, atol=1e-4)


def test_a_fitted_guide_hears_openings_it_never_saw_and_round_trips(tmp_path):
    for name, seed in (("train", 0), ("held_out", 1)):
        write_dataset(tmp_path / name, clips=3, seed=seed)
        add_audio(tmp_path / name, seed)
    guide, fit = fit_mouth_guide(tmp_path / "train", half_window=1, audio_ridge=10.0)
    assert fit["r"] > 0.95 and fit["audio r"] > 0.9 and fit["gain"] >= 1.0
    # The synthetic openings are uniform on [0, 0.5]: std 0.144; eyes 40 px apart over lips 24 px wide, boxes 1.5x.
    assert guide.opening_std == pytest.approx(0.5 / 12**0.5, rel=0.1)
    assert guide.eyes_per_box == pytest.approx(40 / (24 * 1.5), rel=0.01)
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
    assert (again.gain, again.opening_std, again.eyes_per_box) == pytest.approx(
        (guide.gain, guide.opening_std, guide.eyes_per_box)
    )


def test_the_swapped_audio_control_scores_the_next_clips_prediction_cut_or_tiled():
    """A reader that reads each clip's openings exactly scores 1 with its own audio; the control pairs each clip
    with the next one's prediction, cut to its length (a longer next clip) or tiled (a shorter one)."""
    rng = np.random.default_rng(0)
    openings = [rng.normal(size=n) for n in (40, 25, 60)]
    openings[0][3] = np.nan  # a frame without a face is left out
    predicted = [np.nan_to_num(o) for o in openings]
    own, swapped = own_and_swapped_r(predicted, openings)
    assert np.allclose(own, 1.0)
    assert swapped[0] == pytest.approx(pearson(np.resize(predicted[1], 40), openings[0]))  # 25 tiled to 40
    assert swapped[1] == pytest.approx(pearson(predicted[2][:25], openings[1]))  # 60 cut to 25
    assert swapped[2] == pytest.approx(
        pearson(np.resize(predicted[0], 60), openings[2])
    )  # the last: the first's
    assert all(abs(r) < 0.5 for r in swapped)


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
    """A guide for the tiny pipeline's latents and audio features, its readers' weights random."""
    proj = pipe.model.audio_projector.config
    n = (2 * 2 + 1) * proj.num_layers * proj.feature_dim
    g = torch.Generator().manual_seed(seed)
    reader = MouthReader(torch.randn(pipe.codec.latent_channels * GRID * GRID, generator=g), 0.0)
    audio = AudioReader(torch.zeros(n), torch.ones(n), torch.randn(n, generator=g), 0.0, 2)
    return MouthGuide(reader, audio, 1.0, 0.1, 0.9)


def test_decoding_with_the_guides_gaps_moves_only_the_lips(tiny_pipe):
    latents = torch.randn(
        4, tiny_pipe.codec.latent_channels, 8, 8, generator=torch.Generator().manual_seed(0)
    )
    gaps = torch.tensor([0.0, 3.0, -2.0, 5.0])
    plain = np.stack(list(tiny_pipe.decode(latents, 2))).astype(int)
    moved = np.stack(list(tiny_pipe.decode(latents, 2, mouth=(BOX, gaps)))).astype(int)
    assert np.array_equal(moved[0], plain[0])  # a gap of 0
    changed = np.abs(moved - plain).max((0, 3)) > 1  # (H, W), beyond rounding
    rows, cols = np.nonzero(changed)
    x0, y0, x1, y1 = (BOX * 64).tolist()
    # within the box's columns, from the lips' meeting row to one box height below the box (the chin)
    assert len(rows) and x0 <= cols.min() and cols.max() <= x1
    assert (y0 + y1) / 2 - 1 <= rows.min() and rows.max() <= 2 * y1 - y0


def test_generate_parts_the_lips_unless_mouth_guidance_is_0(tiny_pipe, tmp_path):
    from emo.data.clips import write_audio
    from emo.media import iter_video_frames

    write_audio(tmp_path / "a.wav", np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32))
    portrait = Path(__file__).parent.parent / "examples" / "anchor_portrait.jpg"

    def video(name: str, guidance: float | None) -> np.ndarray:
        out = tmp_path / f"{name}.mp4"
        opts = replace(fast_options(), mouth_guidance=guidance)
        tiny_pipe.generate(portrait, tmp_path / "a.wav", out, opts, progress=False)
        return np.stack(list(iter_video_frames(out))).astype(float)

    without = video("without", None)  # the model has no guide
    tiny_pipe.mouth_guide = guide_for(tiny_pipe)
    try:
        guided, off = video("guided", None), video("off", 0.0)
    finally:
        tiny_pipe.mouth_guide = None
    assert np.array_equal(off, without) and np.abs(guided - off).mean() > 0


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
