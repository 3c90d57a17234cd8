"""`emo train`: the three stages on a dataset made by `emo preprocess` from a real fixture video.

Every weight is tiny and random but saved in the real on-disk layouts: SD1.5 as a diffusers UNet folder,
AnimateDiff as a diffusers MotionAdapter folder, the VAE as an AutoencoderKL folder, and the audio
features come from a tiny wav2vec2 through the real preprocessing. Frames are 64² (latents 8²), clips
are n=2 motion + f=4 current frames, so every stage runs a step in about a second on one CPU core.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from emo.errors import EmoError
from emo.models import EMO
from emo.training import checkpoints as layout
from emo.training.config import STAGE_COMPONENTS, TrainConfig, config_from_dict, load_config
from emo.training.export import load_trained_model
from emo.training.trainer import Trainer

DATA = Path(__file__).parent / "data"
CONFIGS = Path(__file__).parent.parent / "configs"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: tiny ops gain nothing from two, and on a shared, busy CPU two threads waiting on
    each other at every op made steps up to 100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    from emo.data.dataset_config import PreprocessConfig
    from emo.data.preprocess import run_preprocess
    from emo.tiny import tiny_audio_model, tiny_vae
    from models_helpers import tiny_diffusers_unet, tiny_motion_adapter

    root = tmp_path_factory.mktemp("training")
    tiny_diffusers_unet().save_pretrained(root / "sd15" / "unet")  # a diffusers pipeline folder's unet/
    tiny_vae().save_pretrained(root / "vae", safe_serialization=True)
    tiny_motion_adapter().save_pretrained(root / "motion_adapter")
    tiny_audio_model().save_pretrained(root / "wav2vec2", safe_serialization=True)
    # 4 s of a real talking head -> one 120-frame clip at 30 fps, 64², with wav2vec2 features.
    summary = run_preprocess(
        [DATA / "hdtf_speech_256_4s.mp4"],
        root / "dataset",
        PreprocessConfig(size=64, min_clip_s=1.0, max_clip_s=4.0),
        audio_encoder=str(root / "wav2vec2"),
        progress=False,
    )
    assert summary["clips_with_audio_features"] == 1
    return {
        "root": root,
        "sd15": root / "sd15",
        "vae": root / "vae",
        "adapter": root / "motion_adapter",
        "dataset": root / "dataset",
        "wav2vec2": root / "wav2vec2",
    }


def stage_config(
    assets, stage: int, out: Path, init: dict, train: dict | None = None, run: dict | None = None
):
    """A tiny stage config, as a user would write it (plain dict -> validated StageConfig)."""
    return config_from_dict(
        {
            "stage": stage,
            "model": "tiny",
            "codec": str(assets["vae"]),
            "init": init,
            "data": {
                "dataset": str(assets["dataset"]),
                "num_motion_frames": 2,
                "num_frames": 4,
                "num_workers": 0,
            },
            "train": {"batch_size": 2, "max_steps": 3, "lr": 1e-4, "weight_decay": 0.0, **(train or {})},
            "run": {"output_dir": str(out), "checkpoint_every": 100, "validate_every": 0, **(run or {})},
        }
    )


def named_groups(model: EMO, components: list[str]) -> set[str]:
    ids = {id(p) for name in components for p in model.parameter_groups()[name]}
    return {k for k, p in model.named_parameters() if id(p) in ids}


@pytest.fixture(scope="module")
def runs(assets, tmp_path_factory) -> dict[int, Path]:
    """Stage 1 from SD1.5, stage 2 from stage 1 + AnimateDiff, stage 3 from stage 2: 3 steps each."""
    root = tmp_path_factory.mktemp("runs")
    inits = {
        1: {"sd15": str(assets["sd15"])},
        2: {"checkpoint": str(root / "stage1"), "motion_module": str(assets["adapter"])},
        3: {"checkpoint": str(root / "stage2")},
    }
    out = {}
    for stage in (1, 2, 3):
        cfg = stage_config(
            assets,
            stage,
            root / f"stage{stage}",
            inits[stage],
            run={"validate_every": 3, "validation_steps": 2},
        )
        result = Trainer(cfg).fit()
        assert result.step == 3 and all(math.isfinite(v) for v in result.losses.values())
        out[stage] = root / f"stage{stage}"
    return out


# -- configs ------------------------------------------------------------------------------------------
def test_shipped_configs_load_with_the_paper_settings():
    full = {s: load_config(CONFIGS / f"stage{s}.yaml") for s in (1, 2, 3)}
    assert [full[s].train.batch_size * full[s].train.gradient_accumulation for s in (1, 2, 3)] == [48, 4, 4]
    for s, cfg in full.items():
        assert (cfg.model, cfg.train.lr, cfg.data.size, cfg.stage) == ("sd15", 1e-5, 512, s)
        assert cfg.components == STAGE_COMPONENTS[s]
        if s > 1:
            assert (cfg.data.num_motion_frames, cfg.data.num_frames) == (4, 12)
    assert full[1].init.sd15 and full[2].init.motion_module and full[3].init.checkpoint
    for s in (1, 2, 3):
        assert load_config(CONFIGS / f"stage{s}_tiny.yaml").model == "tiny"


def test_small_configs_chain_their_stages():
    """1 -> 2 -> 3 (scripts/train_small.sh) and the 3b, 3c, 3e and 3r runs after 3, each from the previous run
    directory."""
    small = {
        s: load_config(CONFIGS / f"stage{s}_small.yaml") for s in ("1", "2", "3", "3b", "3c", "3e", "3r")
    }
    assert all(cfg.model == "small" and cfg.codec == "taef2" and cfg.data.latents for cfg in small.values())
    for previous, stage in (("1", "2"), ("2", "3"), ("3", "3b"), ("3", "3c"), ("3", "3e"), ("3", "3r")):
        assert small[stage].init.checkpoint == small[previous].run.output_dir
    # 3b: stage 3's inputs (head speed), stage 2's audio path; the speed layers stay as stage 3 left them
    assert small["3b"].stage == 3
    assert small["3b"].components == small["2"].components
    assert small["3b"].train.lr < small["2"].train.lr
    # 3c: the audio path alone, with the audio contrast (off everywhere else)
    assert small["3c"].stage == 3 and small["3c"].train.audio_contrast > 0
    assert set(small["3c"].components) < set(small["2"].components)
    assert all(small[s].train.audio_contrast == 0 for s in ("1", "2", "3", "3b", "3e"))
    # 3e: the audio path alone, at the noisy end only, unweighted (uniform timesteps everywhere else)
    assert small["3e"].train.min_timestep > 0 and small["3e"].train.snr_gamma is None
    assert set(small["3e"].components) == set(small["3c"].components)
    assert all(small[s].train.min_timestep == 0 for s in ("1", "2", "3", "3b", "3c", "3r"))
    # 3r: the audio path alone, with the mouth reading (off everywhere else)
    assert small["3r"].train.mouth_reading > 0 and small["3r"].train.mouth_reader
    assert set(small["3r"].components) == set(small["3c"].components)
    assert all(small[s].train.mouth_reading == 0 for s in ("1", "2", "3", "3b", "3c", "3e"))


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=1", "unknown config key.*train.lrr"),
        ("train.lr=-1", "train.lr must be > 0"),
        ("train.batch_size=two", "train.batch_size must be an integer"),
        (
            "train.components=[backbone.spatial,backbone.nope]",
            "train.components unknown component.*backbone.nope",
        ),
        ("train.mixed_precision=fp8", "train.mixed_precision must be one of"),
        ("train.drop_audio=1.5", "train.drop_audio must be a probability"),
        ("init.checkpoint=null", "init.checkpoint"),
        ("train.audio_contrast=-1", "train.audio_contrast must be >= 0"),
        ("train.min_timestep=1000", r"train.min_timestep must be in \[0, 1000\)"),
        ("train.min_timestep=-1", r"train.min_timestep must be in \[0, 1000\)"),
    ],
)
def test_bad_config_values_name_the_field(override, message):
    with pytest.raises(EmoError, match=message):
        load_config(CONFIGS / "stage2_tiny.yaml", [override])


def test_audio_contrast_needs_audio_and_a_partner_in_the_batch():
    with pytest.raises(EmoError, match="train.audio_contrast needs train.batch_size >= 2"):
        load_config(CONFIGS / "stage2_tiny.yaml", ["train.audio_contrast=1", "train.batch_size=1"])
    with pytest.raises(EmoError, match="train.audio_contrast needs audio"):
        load_config(CONFIGS / "stage1_tiny.yaml", ["train.audio_contrast=1"])


class Deaf(torch.nn.Module):
    """A stand-in network that outputs zeros whatever it hears."""

    def forward(self, noisy, timesteps, reference, motion, num_motion, keep_motion, cond):
        return torch.zeros_like(noisy)


class Oracle(torch.nn.Module):
    """A stand-in network that outputs `answer` when it hears `own_audio`, and is off by the audio's change."""

    def __init__(self, answer: torch.Tensor, own_audio: torch.Tensor):
        super().__init__()
        self.answer, self.own_audio = answer, own_audio

    def forward(self, noisy, timesteps, reference, motion, num_motion, keep_motion, cond):
        return self.answer + (cond.audio - self.own_audio).mean(dim=(2, 3, 4))[:, :, None, None, None]


def test_audio_contrast_charges_a_network_that_ignores_the_audio():
    """train.audio_contrast: at the noisier timesteps, a network whose mouth error is the same with another
    sample's audio pays contrast x margin; one that gets the mouth right only with its own audio pays nothing;
    at the less noisy timesteps it never applies."""
    from emo.sampling import training_schedule
    from emo.training.loss import AUDIO_CONTRAST_MARGIN, denoising_loss, noised_batch
    from emo.training.stages import ModelInputs

    b, f, c, h, w = 4, 3, 2, 8, 8
    g = torch.Generator().manual_seed(0)
    audio = torch.randn(b, f, 3, 4, 5, generator=g)
    mouth = torch.tensor([0.25, 0.5, 0.75, 1.0]).expand(b, f, 4)
    schedule = training_schedule()
    plain = TrainConfig(drop_reference=0, drop_audio=0, drop_both=0, drop_motion=0)

    inputs = ModelInputs(torch.zeros(b, f, c, h, w), torch.zeros(b, c, h, w), None, 0, audio, None,
                         torch.ones(b, 1, 64, 64), mouth)  # fmt: skip

    def loss(net, contrast):  # every call draws the same noise and timesteps
        t = dataclasses.replace(plain, audio_contrast=contrast)
        gen = torch.Generator().manual_seed(1)
        return denoising_loss(net, inputs, schedule, schedule.alphas_cumprod, t, gen, "cpu")

    batch = noised_batch(inputs, schedule, plain, torch.Generator().manual_seed(1), "cpu")
    noisy = (batch.timesteps >= 500).float().mean().item()
    assert 0 < noisy < 1  # both halves are in the batch

    deaf = Deaf()
    assert math.isclose(loss(deaf, 2.0) - loss(deaf, 0.0), 2.0 * AUDIO_CONTRAST_MARGIN * noisy, rel_tol=1e-5)
    # A network that outputs the true ε with its own audio, and something else with another's, pays nothing.
    hearing = Oracle(batch.wanted, audio)
    assert torch.equal(loss(hearing, 2.0), loss(hearing, 0.0))


def test_min_timestep_draws_only_the_noisy_end():
    """train.min_timestep > 0 trains on timesteps in [min_timestep, 1000) only; 0 draws all of them."""
    from emo.sampling import training_schedule
    from emo.training.loss import noised_batch
    from emo.training.stages import ModelInputs

    b = 256
    inputs = ModelInputs(torch.zeros(b, 1, 2, 4, 4), torch.zeros(b, 2, 4, 4), None, 0, None, None,
                         torch.ones(b, 1, 32, 32))  # fmt: skip

    def timesteps(min_timestep):
        t = TrainConfig(min_timestep=min_timestep)
        return noised_batch(inputs, training_schedule(), t, torch.Generator().manual_seed(0), "cpu").timesteps

    everywhere, noisy_end = timesteps(0), timesteps(600)
    assert everywhere.min() < 100 and everywhere.max() > 900
    assert noisy_end.min() >= 600 and noisy_end.max() <= 999
    assert noisy_end.float().std() > 50  # still spread over the range, not pinned to its edge


def test_condition_dropout_frequencies():
    from emo.training.loss import dropout_events

    u = torch.rand(200_000, generator=torch.Generator().manual_seed(0))
    ref, audio = dropout_events(u, 0.05, 0.05, 0.05)
    rates = {
        "reference only": (ref & ~audio).float().mean().item(),
        "audio only": (audio & ~ref).float().mean().item(),
        "both": (ref & audio).float().mean().item(),
    }
    assert all(abs(r - 0.05) < 0.003 for r in rates.values()), rates
    ref, audio = dropout_events(u, 0.0, 0.0, 0.0)
    assert not ref.any() and not audio.any()


def test_min_snr_weights_down_weight_only_low_noise_steps():
    from emo.sampling import training_schedule
    from emo.training.loss import min_snr_weights

    alphas = training_schedule().alphas_cumprod
    t = torch.tensor([0, 50, 200, 500, 999])
    w = min_snr_weights(alphas, t, 5.0)
    snr = alphas[t] / (1 - alphas[t])
    assert torch.allclose(w[snr <= 5], torch.ones_like(w[snr <= 5]))  # noisy steps: plain MSE
    assert torch.allclose(w[snr > 5] * snr[snr > 5], torch.full_like(w[snr > 5], 5.0))  # clean steps: γ / SNR
    assert (snr > 5).any() and (snr <= 5).any()
    v = min_snr_weights(alphas, t, 5.0, "v_prediction")  # v-prediction: min(SNR, γ) / (SNR + 1)
    assert torch.allclose(v, torch.clamp(snr, max=5.0) / (snr + 1))


def test_mouth_weight_counts_the_mouths_latents_more():
    """train.mouth_weight: latents whose centre lies in the frame's mouth box count 1 + w times."""
    from emo.training.loss import box_weights

    boxes = torch.tensor([[[0.25, 0.5, 0.75, 1.0], [0.0, 0.0, 0.26, 0.26]]])  # (B=1, F=2, 4)
    weights = box_weights(boxes, 4, 4, 3.0)  # latent centres at 0.125, 0.375, 0.625, 0.875
    assert weights.shape == (1, 2, 1, 4, 4)
    expected = torch.ones(2, 4, 4)
    expected[0, 2:, 1:3] = 4.0
    expected[1, :1, :1] = 4.0
    assert torch.equal(weights[0, :, 0], expected)


def test_mouth_error_is_the_mean_over_the_mouths_latents():
    from emo.training.loss import mouth_error

    boxes = torch.tensor([[[0.25, 0.5, 0.75, 1.0], [0.0, 0.0, 0.26, 0.26]]])  # as above: 2x2 and 1x1 latents
    error = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(1, 2, 3, 4, 4)  # (B, F, C, h, w)
    inside = torch.cat([error[0, 0, :, 2:, 1:3].flatten(), error[0, 1, :, :1, :1].flatten()])
    assert torch.allclose(mouth_error(error, boxes), inside.mean()[None])


def test_deepspeed_takes_batch_accumulation_and_clipping_from_the_stage_config():
    """accelerate lets a DeepSpeed config's gradient_accumulation_steps win over the stage config's with only
    a warning; the trainer writes the stage config's values into the plugin's config instead. Checked on the
    plugin accelerate builds from the shipped accelerate config (that needs no deepspeed)."""
    import yaml
    from accelerate.utils import DeepSpeedPlugin

    from emo.training.trainer import reconcile_deepspeed_config

    stage1 = load_config(CONFIGS / "stage1.yaml").train  # batch 6 x 8 micro-batches, max_grad_norm 1.0
    shipped = yaml.safe_load((CONFIGS / "accelerate" / "deepspeed_zero2.yaml").read_text())
    ds = DeepSpeedPlugin(**shipped["deepspeed_config"]).deepspeed_config
    assert reconcile_deepspeed_config(ds, stage1, 8) == []  # the shipped file sets none of them
    keys = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping")
    assert [ds[k] for k in keys] == [6, 8, 1.0]
    assert ds["train_batch_size"] == "auto"  # accelerate fills it from the values above

    # An accelerate config that names other values (as the shipped one did: 1 step, clip 1.0) is overridden.
    old = DeepSpeedPlugin(**shipped["deepspeed_config"], gradient_accumulation_steps=1, gradient_clipping=0.5)
    old = old.deepspeed_config
    changed = reconcile_deepspeed_config(old, stage1, 8)
    assert changed == ["gradient_accumulation_steps: 1 -> 8", "gradient_clipping: 0.5 -> 1.0"]
    assert (old["gradient_accumulation_steps"], old["gradient_clipping"]) == (8, 1.0)
    # A DeepSpeed JSON with a fixed total batch (DeepSpeed requires micro x accumulation x processes), and
    # train.max_grad_norm 0 (measure only) -> DeepSpeed's 0.0 (no clipping).
    config = {"train_batch_size": 48, "train_micro_batch_size_per_gpu": 6, "zero_optimization": {"stage": 2}}
    changed = reconcile_deepspeed_config(config, dataclasses.replace(stage1, max_grad_norm=0.0), 8)
    assert changed == ["train_batch_size: 48 -> 384"]
    assert [config[k] for k in ("train_batch_size", *keys)] == [384, 6, 8, 0.0]


# -- stages -------------------------------------------------------------------------------------------
def test_each_stage_trains_exactly_its_components(runs):
    """A stage changes exactly the parameters of its components (weight decay 0: with Adam a parameter
    moves only if it received a gradient); every frozen parameter is bit-identical after the steps.

    The one exception is structural: the ReferenceNet's last transformer block contributes only its input
    (a reference feature), so its attention, feed-forward and output projection cannot affect the loss; the
    trainer finds them and leaves them frozen."""
    last = "reference_net.up_blocks.1.attentions.1."
    never_used = {last + k for k in ("proj_out.weight", "proj_out.bias")} | {
        f"{last}transformer_blocks.0.{k}"
        for k in (
            "attn1.to_q.weight",
            "attn1.to_k.weight",
            "attn1.to_v.weight",
            "attn1.to_out.0.weight",
            "attn1.to_out.0.bias",
            "norm3.weight",
            "norm3.bias",
            "ff.net.0.proj.weight",
            "ff.net.0.proj.bias",
            "ff.net.2.weight",
            "ff.net.2.bias",
        )
    }
    for stage, run_dir in runs.items():
        before = EMO.from_pretrained(run_dir / layout.BASE)
        after = load_trained_model(run_dir)
        trained = named_groups(before, STAGE_COMPONENTS[stage]) - never_used
        a = dict(after.named_parameters())
        changed = {k for k, p in before.named_parameters() if not torch.equal(p, a[k])}
        assert changed == trained, (stage, sorted(trained - changed)[:5], sorted(changed - trained)[:5])
        assert set(load_file(str(layout.resolve_checkpoint(run_dir) / layout.TRAINABLE))) == trained


def test_stages_start_from_the_weights_they_name(assets, runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from emo.models.loading import read_motion_module, read_sd_unet

    # Stage 1's starting network holds the SD1.5 weights; stage 2's the stage-1 result + AnimateDiff.
    sd = read_sd_unet(assets["sd15"])
    base1 = EMO.from_pretrained(runs[1] / layout.BASE).backbone.state_dict()
    assert torch.equal(base1["conv_in.weight"], sd["conv_in.weight"])
    base2 = EMO.from_pretrained(runs[2] / layout.BASE)
    stage1 = load_trained_model(runs[1])
    for k, v in stage1.reference_net.state_dict().items():
        assert torch.equal(base2.reference_net.state_dict()[k], v), k
    motion = read_motion_module(assets["adapter"])  # the adapter in AnimateDiff names
    backbone = base2.backbone.state_dict()
    assert len(motion) > 0 and all(torch.equal(backbone[k], v) for k, v in motion.items())
    # Each run logged its losses and wrote a validation video.
    for run_dir in runs.values():
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
        assert all(
            r["lr"] > 0 and r["grad_norm"] > 0 and r["samples_per_s"] > 0 for r in records if "loss" in r
        )
        assert (run_dir / "samples" / "step_00000003.mp4").stat().st_size > 0
        # TensorBoard: the training scalars at step 1 (then every run.log_every), validation at 0 and 3.
        events = EventAccumulator(str(run_dir / "logs"))
        events.Reload()
        train_tags = [f"train/{k}" for k in ("loss", "lr", "grad_norm", "samples_per_s", "memory_mib")]
        assert set(events.Tags()["scalars"]) == {*train_tags, "validation/loss"}, events.Tags()
        for tag in train_tags:
            points = events.Scalars(tag)
            assert [e.step for e in points] == [1] and all(math.isfinite(e.value) for e in points), tag
        assert [e.step for e in events.Scalars("validation/loss")] == [0, 3]
        assert events.Tags()["images"] == ["validation/frames"]
        frames = events.Images("validation/frames")
        assert [e.step for e in frames] == [0, 3] and all(e.width > 0 and e.height > 0 for e in frames)


def test_unknown_component_is_an_error(assets, tmp_path):
    with pytest.raises(EmoError, match="unknown component.*backbone.motion"):
        stage_config(
            assets,
            1,
            tmp_path / "x",
            {"sd15": str(assets["sd15"])},
            train={"components": ["backbone.spatial", "backbone.motion"]},
        )


# -- runs ---------------------------------------------------------------------------------------------
def test_the_trainer_adds_the_mouth_reading_and_checks_its_reader(assets, runs, tmp_path):
    """train.mouth_reading through `emo train`: the reader is loaded and checked against the network's latent
    channels, and its term is in the loss the run logs (the same draws give a higher loss with it)."""
    from emo.conditioning.mouth import GRID, MouthReader

    channels = EMO.from_pretrained(runs[2] / layout.BASE).backbone.config.in_channels
    MouthReader(torch.ones(channels * GRID * GRID), 0.0).save(tmp_path / "reader.safetensors")
    MouthReader(torch.ones(32 * GRID * GRID), 0.0).save(tmp_path / "other_codec.safetensors")

    def first_loss(name, weight, reader="reader.safetensors"):
        cfg = stage_config(assets, 3, tmp_path / name, {"checkpoint": str(runs[2])},
                           train={"max_steps": 1, "mouth_reading": weight,
                                  "mouth_reader": str(tmp_path / reader)})  # fmt: skip
        return Trainer(cfg).fit().losses[1]

    plain, reading = first_loss("plain", 0.0), first_loss("reading", 10.0)
    assert math.isfinite(reading) and reading > plain
    with pytest.raises(EmoError, match=f"reads latents of 32 channels, the network's have {channels}"):
        first_loss("mismatch", 1.0, "other_codec.safetensors")


def test_resume_repeats_the_uninterrupted_run(assets, runs, tmp_path):
    """Interrupted at step 3 and resumed to 6 == 6 steps straight: losses and weights (EMA included) equal
    to 1e-6 (on CPU fp32 they are in fact bit-identical). Gradient accumulation, warmup, cosine LR, noise
    offset, min-SNR weighting, EMA and all dropouts are on; the data are the first 5 clip windows, so the
    12 micro-batches span 3 epochs and the interruption falls inside one (the data position matters)."""
    from emo.training.stages import build_dataset

    def config(out):
        return stage_config(
            assets,
            2,
            out,
            {"checkpoint": str(runs[1])},
            train={
                "batch_size": 1,
                "gradient_accumulation": 2,
                "max_steps": 6,
                "warmup_steps": 2,
                "lr_schedule": "cosine",
                "noise_offset": 0.1,
                "snr_gamma": 5.0,
                "ema_decay": 0.9,
                "drop_reference": 0.2,
                "drop_audio": 0.2,
                "drop_both": 0.2,
                "drop_motion": 0.3,
            },
            run={"checkpoint_every": 2, "keep_checkpoints": 2},
        )

    def data():
        return Head(build_dataset(config(tmp_path / "a")), 5)

    straight = Trainer(config(tmp_path / "a"), dataset=data()).fit()
    first = Trainer(config(tmp_path / "b"), dataset=data()).fit(stop_at=3)  # "interrupted" after step 3
    assert first.step == 3 and first.last_checkpoint.name == "step_00000003"
    with pytest.raises(EmoError, match="--resume auto"):
        Trainer(config(tmp_path / "b"), dataset=data()).fit()  # a fresh start would overwrite the run
    resumed = Trainer(config(tmp_path / "b"), dataset=data()).fit(resume="auto")
    assert sorted(resumed.losses) == [4, 5, 6]
    losses = {**first.losses, **resumed.losses}
    differences = {"loss": max(abs(losses[s] - straight.losses[s]) for s in range(1, 7))}
    for name in (layout.TRAINABLE, layout.EMA):
        a = load_file(str(tmp_path / "a" / "checkpoints" / "step_00000006" / name))
        b = load_file(str(tmp_path / "b" / "checkpoints" / "step_00000006" / name))
        differences[name] = max((a[k] - b[k]).abs().max().item() for k in a)
    print("resumed vs uninterrupted, largest difference:", differences)
    assert all(d <= 1e-6 for d in differences.values()), differences
    # Keep last K = 2: the older checkpoints are gone, the rest complete.
    assert [p.name for p in layout.list_checkpoints(tmp_path / "b")] == ["step_00000004", "step_00000006"]


def test_gradient_checkpointing_and_bf16_keep_the_training(assets, runs, tmp_path):
    """Gradient checkpointing recomputes activations: same losses and weights. bf16 autocast: close losses."""

    def run(name: str, **train) -> tuple[dict[int, float], dict[str, torch.Tensor]]:
        cfg = stage_config(
            assets, 2, tmp_path / name, {"checkpoint": str(runs[1])}, train={"batch_size": 1, **train}
        )
        result = Trainer(cfg).fit()
        return result.losses, load_file(str(result.last_checkpoint / layout.TRAINABLE))

    plain_losses, plain = run("plain")
    ckpt_losses, ckpt = run("checkpointing", gradient_checkpointing=True)
    assert max(abs(plain_losses[k] - ckpt_losses[k]) for k in plain_losses) <= 1e-6
    assert max((plain[k] - ckpt[k]).abs().max().item() for k in plain) <= 1e-6
    from accelerate.state import AcceleratorState

    # accelerate keeps one precision per process (`emo train` runs one stage per process); start afresh.
    AcceleratorState._reset_state()
    try:
        bf16_losses, _ = run("bf16", mixed_precision="bf16")
    finally:
        AcceleratorState._reset_state()
    assert max(abs(plain_losses[k] - bf16_losses[k]) for k in plain_losses) <= 2e-2


def test_fp16_on_the_cpu_is_refused(assets, tmp_path):
    """accelerate gives fp16 on a CPU neither autocast nor a grad scaler (only the inputs would be half), so
    the trainer refuses it rather than run an untested half-fp16 path; bf16 is the CPU's mixed precision."""
    from accelerate.state import AcceleratorState

    cfg = stage_config(
        assets, 1, tmp_path / "run", {"sd15": str(assets["sd15"])}, train={"mixed_precision": "fp16"}
    )
    AcceleratorState._reset_state()  # one precision per process: start afresh, and leave none behind
    try:
        with pytest.raises(EmoError, match="fp16 needs a GPU"):
            Trainer(cfg)
    finally:
        AcceleratorState._reset_state()
    assert not (tmp_path / "run").exists()


def test_resume_refuses_a_checkpoint_missing_a_ranks_rng_state(assets, runs, tmp_path):
    import shutil

    shutil.copytree(runs[1], tmp_path / "run")
    (checkpoint,) = layout.list_checkpoints(tmp_path / "run")
    (checkpoint / "rng_0.safetensors").unlink()
    cfg = stage_config(assets, 1, tmp_path / "run", {"sd15": str(assets["sd15"])}, train={"max_steps": 4})
    with pytest.raises(EmoError, match=r"step_00000003 is incomplete: rng_0\.safetensors missing"):
        Trainer(cfg).fit(resume="auto")


def test_export_uses_the_ema_unless_no_ema(assets, tmp_path):
    from emo.cli import main

    cfg = stage_config(
        assets, 1, tmp_path / "run", {"sd15": str(assets["sd15"])}, train={"max_steps": 2, "ema_decay": 0.5}
    )
    checkpoint = Trainer(cfg).fit().last_checkpoint
    ema, raw = load_file(str(checkpoint / layout.EMA)), load_file(str(checkpoint / layout.TRAINABLE))
    assert ema.keys() == raw.keys() and any(not torch.equal(ema[k], raw[k]) for k in raw)
    for flags, expected in (([], ema), (["--no-ema"], raw)):
        out = tmp_path / f"export{''.join(flags)}"
        assert main(["train", "export", str(tmp_path / "run"), "--out", str(out), *flags]) == 0
        exported = dict(EMO.from_pretrained(out).named_parameters())
        assert all(torch.equal(exported[k], v) for k, v in expected.items()), flags


class Head(torch.utils.data.Dataset):
    """The first `count` items of a dataset (set_epoch passed through)."""

    def __init__(self, data, count: int):
        self.data, self.count = data, count

    def set_epoch(self, epoch: int) -> None:
        self.data.set_epoch(epoch)

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        if index >= self.count:
            raise IndexError(index)
        return self.data[index]


class PoisonAfter(torch.utils.data.Dataset):
    """The real dataset, with NaN pixels from the `after`-th read on (a corrupt file, a bad decode...)."""

    def __init__(self, data, after: int):
        self.data, self.after, self.reads = data, after, 0

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        item = self.data[index]
        self.reads += 1
        if self.reads > self.after:
            item = {**item, "target": torch.full_like(item["target"], float("nan"))}
        return item


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(assets, tmp_path):
    from emo.training.stages import build_dataset

    cfg = stage_config(
        assets,
        1,
        tmp_path / "run",
        {"sd15": str(assets["sd15"])},
        train={"max_steps": 10},
        run={"checkpoint_every": 2},
    )
    data = PoisonAfter(build_dataset(cfg), after=2 * 5)  # steps 1-5 are clean (batch 2), step 6 is not
    with pytest.raises(
        EmoError, match=r"non-finite loss \(nan\) at step 6.*last good checkpoint is .*step_00000004"
    ):
        Trainer(cfg, dataset=data).fit()
    (last,) = layout.list_checkpoints(tmp_path / "run")[-1:]
    assert last.name == "step_00000004"
    assert all(torch.isfinite(v).all() for v in load_file(str(last / layout.TRAINABLE)).values())
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp-*"))
    # Data fixed, the run resumes from step 4; step 5's lost record is replaced, not duplicated.
    Trainer(cfg, dataset=build_dataset(cfg)).fit(resume="auto", stop_at=6)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]


def test_export_writes_what_generate_reads(assets, runs, tmp_path):
    from emo.cli import main
    from emo.generation.pipeline import EMOPipeline

    out = tmp_path / "weights"
    assert (
        main(["train", "export", str(runs[3]), "--out", str(out), "--audio-encoder", str(assets["wav2vec2"])])
        == 0
    )
    exported = EMO.from_pretrained(out)
    trained = load_trained_model(runs[3])
    t = dict(trained.named_parameters())
    assert all(torch.equal(p, t[k]) for k, p in exported.named_parameters())
    pipe = EMOPipeline.from_weights(out)  # vae/ and wav2vec2/ found inside the directory
    assert pipe.codec.latent_channels == 4
    assert main(["train", "export", str(runs[3]), "--out", str(out)]) == 2  # exists, no --overwrite
    (out / "stale").write_text("from the export before")
    assert main(["train", "export", str(runs[3]), "--out", str(out), "--overwrite"]) == 0
    assert not (out / "stale").exists() and (out / "emo.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights"]  # no temporary or set-aside folder left


def test_cli_trains_and_resumes(assets, runs, tmp_path, capsys):
    from emo.cli import main

    config = tmp_path / "stage3.yaml"
    config.write_text((CONFIGS / "stage3_tiny.yaml").read_text())
    args = [
        f"codec={assets['vae']}",
        f"init.checkpoint={runs[2]}",
        f"data.dataset={assets['dataset']}",
        f"run.output_dir={tmp_path / 'run'}",
        "data.size=64",
        "data.num_motion_frames=2",
        "data.num_frames=4",
        "data.num_workers=0",
        "run.validate_every=0",
        "train.batch_size=1",
    ]
    assert main(["train", str(config), *args, "--max-steps", "1"]) == 0
    assert main(["train", str(config), *args, "--max-steps", "2", "--resume", "auto"]) == 0
    assert "step 2" in capsys.readouterr().out
    assert [p.name for p in layout.list_checkpoints(tmp_path / "run")][-1] == "step_00000002"
    assert main(["train", str(config), "train.lr=-1"]) == 2
    assert "train.lr must be > 0" in capsys.readouterr().err


SLOW_RANK_1 = """
import os, sys, time
import safetensors.torch
from emo.cli import main

save_file = safetensors.torch.save_file


def slow_save_file(tensors, filename, *args, **kwargs):
    if os.environ["RANK"] == "1" and os.path.basename(filename).startswith("rng_"):
        time.sleep(2)  # the main process is done with its part of the checkpoint long before
    return save_file(tensors, filename, *args, **kwargs)


safetensors.torch.save_file = slow_save_file
sys.exit(main(sys.argv[1:]))
"""


SIGTERM_RANK_1_AFTER_STEP_1 = """
import os, signal, sys
from emo.cli import main
from emo.training import trainer

log = trainer.Trainer._log


def log_then_sigterm(self, step, *args):
    log(self, step, *args)
    if os.environ["RANK"] == "1" and step == 1:
        os.kill(os.getpid(), signal.SIGTERM)


trainer.Trainer._log = log_then_sigterm
sys.exit(main(sys.argv[1:]))
"""


def test_two_processes_train_and_resume_like_one_run(assets, runs, tmp_path):
    """The same command under torchrun (2 processes, DDP over gloo on CPU): stage 1 with the ReferenceNet
    training (no unused-parameter errors), and interrupting + resuming matches the uninterrupted run.

    In the interrupted run rank 1 writes its RNG state 2 s late at every checkpoint: the main process must
    wait for it before renaming the checkpoint into place (else rank 1 crashes, or its file is lost)."""
    import os
    import subprocess
    import sys

    config = tmp_path / "stage1.yaml"
    config.write_text((CONFIGS / "stage1_tiny.yaml").read_text())
    slow = tmp_path / "slow_rank_1.py"
    slow.write_text(SLOW_RANK_1)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}

    def train(out: Path, *extra: str, program: tuple[str, ...] = ("-m", "emo.cli"), check: bool = True):
        args = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            *program,
            "train",
            str(config),
            f"codec={assets['vae']}",
            f"init.sd15={assets['sd15']}",
            f"data.dataset={assets['dataset']}",
            f"run.output_dir={out}",
            "run.validate_every=0",
            "run.checkpoint_every=2",
            "train.batch_size=1",
            "train.warmup_steps=0",
            *extra,
        ]
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 or not check, done.stderr[-3000:]
        return done

    def losses(out: Path) -> dict[int, float]:
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in records if "loss" in r}

    train(tmp_path / "a", "--max-steps", "4")
    train(tmp_path / "b", "--max-steps", "2", program=(str(slow),))
    train(tmp_path / "b", "--max-steps", "4", "--resume", "auto", program=(str(slow),))
    for step in (2, 4):
        checkpoint = tmp_path / "b" / "checkpoints" / f"step_{step:08d}"
        state = json.loads((checkpoint / layout.STATE).read_text())
        assert state["world_size"] == 2 and state["step"] == step
        assert (checkpoint / "rng_0.safetensors").is_file() and (checkpoint / "rng_1.safetensors").is_file()
    assert not list((tmp_path / "b" / "checkpoints").glob(".tmp-*"))
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    assert max(abs(a[k] - b[k]) for k in a) <= 1e-6
    wa = load_file(str(tmp_path / "a" / "checkpoints" / "step_00000004" / layout.TRAINABLE))
    wb = load_file(str(tmp_path / "b" / "checkpoints" / "step_00000004" / layout.TRAINABLE))
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-6

    # Preempted: SIGTERM reaches rank 1 alone, after step 1 (checkpoints come every 2): both ranks checkpoint
    # step 1 and stop (128 + 15), and resuming from it gives the uninterrupted run.
    sigterm = tmp_path / "sigterm_rank_1.py"
    sigterm.write_text(SIGTERM_RANK_1_AFTER_STEP_1)
    done = train(tmp_path / "c", "--max-steps", "4", program=(str(sigterm),), check=False)
    assert done.returncode != 0 and "emo: terminated (SIGTERM)" in done.stderr, done.stderr[-3000:]
    assert [p.name for p in layout.list_checkpoints(tmp_path / "c")] == ["step_00000001"]
    assert (
        json.loads((tmp_path / "c" / "checkpoints" / "step_00000001" / layout.STATE).read_text())[
            "world_size"
        ]
        == 2
    )
    train(tmp_path / "c", "--max-steps", "4", "--resume", "auto")
    c = losses(tmp_path / "c")
    assert sorted(c) == [1, 2, 3, 4] and max(abs(a[k] - c[k]) for k in a) <= 1e-6
    wc = load_file(str(tmp_path / "c" / "checkpoints" / "step_00000004" / layout.TRAINABLE))
    assert max((wa[k] - wc[k]).abs().max().item() for k in wa) <= 1e-6
    assert not list((tmp_path / "c" / "checkpoints").glob(".tmp-*"))


@pytest.mark.slow
def test_overfitting_one_clip_lowers_the_loss(assets, runs, tmp_path):
    """Stage 2 on one fixed clip window for 100 steps: the loss on fixed noise and timesteps (the validation
    loss, logged at step 0 and every 25 steps) falls clearly."""
    from emo.training.stages import build_dataset

    cfg = stage_config(
        assets,
        2,
        tmp_path / "run",
        {"checkpoint": str(runs[1])},
        train={
            "batch_size": 1,
            "max_steps": 100,
            "lr": 1e-3,
            "drop_reference": 0.0,
            "drop_audio": 0.0,
            "drop_both": 0.0,
            "drop_motion": 0.0,
        },
        run={"validate_every": 25, "validation_steps": 1},
    )
    one_clip = Head(build_dataset(cfg), 1)
    Trainer(cfg, dataset=one_clip).fit()
    curve = {}
    for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "validation_loss" in record:
            curve[record["step"]] = record["validation_loss"]
    print("validation loss by step:", {k: round(v, 4) for k, v in curve.items()})
    assert sorted(curve) == [0, 25, 50, 75, 100]
    assert curve[100] < 0.5 * curve[0]


class SigtermAtRead(Head):
    """The first `count` items; the `at`-th read sends SIGTERM to this process (as SLURM or Kubernetes would,
    here in the middle of an optimizer step: its first micro-batch is loaded, the second not yet)."""

    def __init__(self, data, count: int, at: int):
        super().__init__(data, count)
        self.at, self.reads = at, 0

    def __getitem__(self, index):
        self.reads += 1
        if self.reads == self.at:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGTERM)
        return super().__getitem__(index)


def test_sigterm_checkpoints_the_step_in_flight_and_resume_repeats_the_run(assets, runs, tmp_path):
    """SIGTERM during step 3 (gradient accumulation 2, signal between its micro-batches): step 3 finishes, is
    checkpointed (checkpoints are otherwise every 100 steps), Terminated is raised; resuming to 6 gives the
    losses and weights (EMA included) of 6 steps straight."""
    import signal

    from emo.termination import Terminated
    from emo.training.stages import build_dataset

    def config(out):
        return stage_config(
            assets,
            2,
            out,
            {"checkpoint": str(runs[1])},
            train={
                "batch_size": 1,
                "gradient_accumulation": 2,
                "max_steps": 6,
                "warmup_steps": 2,
                "lr_schedule": "cosine",
                "ema_decay": 0.9,
                "drop_audio": 0.2,
            },
            run={"checkpoint_every": 100},
        )

    data = build_dataset(config(tmp_path / "a"))
    straight = Trainer(config(tmp_path / "a"), dataset=Head(data, 5)).fit()
    with pytest.raises(Terminated) as stopped:
        Trainer(config(tmp_path / "b"), dataset=SigtermAtRead(data, 5, at=5)).fit()  # read 5: step 3, micro 1
    assert stopped.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the trainer put the handler back
    assert [p.name for p in layout.list_checkpoints(tmp_path / "b")] == ["step_00000003"]
    assert not list((tmp_path / "b" / "checkpoints").glob(".tmp-*"))
    resumed = Trainer(config(tmp_path / "b"), dataset=Head(data, 5)).fit(resume="auto")
    assert sorted(resumed.losses) == [4, 5, 6]
    records = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in records}
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    assert max(abs(losses[s] - straight.losses[s]) for s in range(1, 7)) <= 1e-6
    for name in (layout.TRAINABLE, layout.EMA):
        a = load_file(str(tmp_path / "a" / "checkpoints" / "step_00000006" / name))
        b = load_file(str(tmp_path / "b" / "checkpoints" / "step_00000006" / name))
        assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6, name
