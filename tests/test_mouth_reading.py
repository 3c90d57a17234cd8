"""The mouth reader and the mouth-reading loss (emo.training.mouth_reading, train.mouth_reading)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from emo.conditioning.mouth import MouthReader, mouth_crops
from emo.errors import EmoError
from emo.training.config import TrainConfig, load_config
from emo.training.mouth_reading import fit_mouth_reader, reading_error, score_mouth_reader
from mouth_helpers import write_dataset

CONFIGS = Path(__file__).parent.parent / "configs"


def test_the_crop_sits_on_the_mouths_centre_and_ignores_the_boxs_height():
    latents = torch.zeros(2, 1, 16, 16)
    latents[:, 0, 8, 8] = 1.0
    around = torch.tensor([[0.45, 0.50, 0.6, 0.56], [0.45, 0.40, 0.6, 0.66]])  # same centre and width
    crops = mouth_crops(latents, around)
    assert torch.allclose(crops[0], crops[1], atol=1e-6)
    elsewhere = mouth_crops(latents[:1], torch.tensor([[0.0, 0.0, 0.15, 0.1]]))
    assert crops.abs().sum() > 0 and elsewhere.abs().sum() == 0


def test_a_fitted_reader_reads_openings_it_never_saw(tmp_path):
    write_dataset(tmp_path / "train", clips=3, seed=0)
    write_dataset(tmp_path / "held_out", clips=2, seed=1)
    reader, fit = fit_mouth_reader(tmp_path / "train")
    assert fit["clips"] == 3 and fit["frames"] == 3 * 59 and fit["r"] > 0.95
    assert all(r > 0.95 for r in score_mouth_reader(reader, tmp_path / "held_out"))
    reader.save(tmp_path / "reader.safetensors")
    again = MouthReader.load(tmp_path / "reader.safetensors")
    assert torch.equal(again.weight, reader.weight) and again.bias == pytest.approx(reader.bias)


def test_a_dataset_without_latents_or_faces_is_a_clear_error(tmp_path):
    write_dataset(tmp_path / "d", clips=1, seed=0)
    next((tmp_path / "d").rglob("latents.safetensors")).unlink()
    with pytest.raises(EmoError, match="has no latents.safetensors; preprocess the dataset with --codec"):
        fit_mouth_reader(tmp_path / "d")
    with pytest.raises(EmoError, match="no clips with faces"):
        fit_mouth_reader(tmp_path / "empty")


def test_a_missing_or_foreign_reader_file_is_a_clear_error(tmp_path):
    with pytest.raises(EmoError, match="not found; make one with `python scripts/fit_mouth_reader.py"):
        MouthReader.load(tmp_path / "nope.safetensors")
    save_file({"something": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(EmoError, match="not a mouth reader"):
        MouthReader.load(tmp_path / "other.safetensors")
    MouthReader(torch.zeros(32 * 16), 0.0).save(tmp_path / "taef2.safetensors")
    assert MouthReader.load(tmp_path / "taef2.safetensors", latent_channels=32).weight.numel() == 32 * 16
    with pytest.raises(
        EmoError, match="reads latents of 32 channels, the network's have 4: fit one on a dataset"
    ):
        MouthReader.load(tmp_path / "taef2.safetensors", latent_channels=4)
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(EmoError, match="not a mouth reader"):
        MouthReader.load(tmp_path / "junk.safetensors")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.mouth_reading=1"], "train.mouth_reading needs train.mouth_reader"),
        (["train.mouth_reading=-1", "train.mouth_reader=r"], "train.mouth_reading must be >= 0"),
    ],
)
def test_bad_mouth_reading_configs_name_the_field(overrides, message):
    with pytest.raises(EmoError, match=message):
        load_config(CONFIGS / "stage2_tiny.yaml", overrides)
    with pytest.raises(EmoError, match="train.mouth_reading needs audio"):
        load_config(CONFIGS / "stage1_tiny.yaml", ["train.mouth_reading=1", "train.mouth_reader=r"])


def test_the_reading_error_is_the_squared_opening_error_of_the_kept_samples():
    reader = MouthReader(torch.zeros(4 * 16), 0.3)
    reader.weight[0] = 1.0  # reads channel 0 at the crop's first grid point
    boxes = torch.tensor([0.4, 0.4, 0.6, 0.6]).expand(2, 3, 4)
    error = torch.zeros(2, 3, 4, 8, 8)
    assert reading_error(error, boxes, reader, torch.ones(2, dtype=torch.bool)) == 0
    error[:, :, 0] = 2.0  # every frame's opening read 2 off (the bias cancels in an error)
    error[1] = 5.0
    assert reading_error(error, boxes, reader, torch.tensor([True, False])).item() == pytest.approx(4.0)
    assert reading_error(error, boxes, reader, torch.tensor([True, True])).item() == pytest.approx(14.5)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_x0_error_is_the_error_of_the_implied_clean_latents(prediction):
    from emo.sampling import prediction_target, training_schedule
    from emo.training.loss import x0_error

    schedule = training_schedule()
    g = torch.Generator().manual_seed(0)
    clean, noise = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    timesteps = torch.tensor([10, 500, 990])
    noisy = schedule.add_noise(clean, noise, timesteps)
    output = prediction_target(schedule, clean, noise, timesteps, prediction) + 0.1 * torch.randn(
        3, 2, 4, 4, generator=g
    )
    alpha_bar = schedule.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    if prediction == "epsilon":
        implied = (noisy - (1 - alpha_bar).sqrt() * output) / alpha_bar.sqrt()
    else:
        implied = alpha_bar.sqrt() * noisy - (1 - alpha_bar).sqrt() * output
    wanted = prediction_target(schedule, clean, noise, timesteps, prediction)
    got = x0_error(output - wanted, schedule.alphas_cumprod, timesteps, prediction)
    assert torch.allclose(got, implied - clean, atol=1e-4)


class Answers(torch.nn.Module):
    """A stand-in network that outputs `answer` whatever its inputs."""

    def __init__(self, answer: torch.Tensor):
        super().__init__()
        self.answer = answer

    def forward(self, noisy, timesteps, reference, motion, num_motion, keep_motion, cond):
        return self.answer


def test_the_loss_adds_the_reading_at_its_weight():
    """train.mouth_reading adds weight x the reading error of the implied x0 (in frame latents: the denoised
    error over denoised_scale); a network whose x0 is right pays nothing."""
    from emo.sampling import training_schedule
    from emo.training.loss import denoising_loss, noised_batch, x0_error
    from emo.training.stages import ModelInputs

    b, f, c, h, w = 2, 3, 4, 8, 8
    g = torch.Generator().manual_seed(0)
    audio = torch.randn(b, f, 3, 4, 5, generator=g)
    mouth = torch.tensor([0.3, 0.4, 0.7, 0.8]).expand(b, f, 4)
    target = torch.randn(b, f, c, h, w, generator=g)
    inputs = ModelInputs(
        target, torch.zeros(b, c, h, w), None, 0, audio, None, torch.ones(b, 1, 64, 64), mouth
    )
    schedule = training_schedule()
    reader = MouthReader(torch.randn(c * 16, generator=g), 0.0)
    plain = TrainConfig(drop_reference=0, drop_audio=0, drop_both=0, drop_motion=0, mouth_reader="r")

    def loss(net, weight):
        t = dataclasses.replace(plain, mouth_reading=weight)
        gen = torch.Generator().manual_seed(1)
        return denoising_loss(net, inputs, schedule, schedule.alphas_cumprod, t, gen, "cpu", target,
                              "v_prediction", reader, denoised_scale=2.0).item()  # fmt: skip

    batch = noised_batch(
        inputs, schedule, plain, torch.Generator().manual_seed(1), "cpu", target, "v_prediction"
    )
    error = x0_error(-batch.wanted, schedule.alphas_cumprod, batch.timesteps, "v_prediction") / 2.0
    expected = reading_error(error, mouth, reader, torch.ones(b, dtype=torch.bool)).item()
    assert expected > 0
    zeros = Answers(torch.zeros_like(target))
    assert math.isclose(loss(zeros, 3.0) - loss(zeros, 0.0), 3.0 * expected, rel_tol=1e-4)
    right = Answers(batch.wanted)
    assert loss(right, 3.0) == loss(right, 0.0)
