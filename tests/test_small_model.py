"""The `small` model's path end to end, as scripts/train_small.sh runs it: a real fixture video preprocessed at
128² with log-mel audio features and the shipped TAEF2 latents cached, stages trained from those latents,
exported with the codec and the audio front-end inside, and generated from.

The network is the real `small` preset with random weights; 10 fps keeps the clip at 40 frames.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from emo.codec import TAEF2, load_codec
from emo.conditioning.audio_front_end import FRONT_END_RECORD, LOG_MEL
from emo.conditioning.log_mel import LogMelFrontEnd
from emo.data import manifest as mf
from emo.data.clips import read_frames
from emo.data.dataset import Stage1Dataset, VideoClipDataset
from emo.errors import EmoError
from emo.training.config import config_from_dict
from emo.training.trainer import Trainer

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from emo.cli import main

    root = tmp_path_factory.mktemp("small") / "data"
    assert (
        main(
            [
                "preprocess",
                str(DATA / "hdtf_speech_256_4s.mp4"),
                "--out",
                str(root),
                "--size",
                "128",
                "--fps",
                "10",
                "--min-clip",
                "1",
                "--audio-encoder",
                LOG_MEL,
                "--codec",
                TAEF2,
            ]
        )
        == 0
    )
    return root


def small_config(
    dataset: Path, stage: int, out: Path, init: dict, train: dict | None = None, **data
) -> object:
    return config_from_dict(
        {
            "stage": stage,
            "model": "small",
            "codec": TAEF2,
            "init": init,
            "data": {
                "dataset": str(dataset),
                "size": 128,
                "num_motion_frames": 1,
                "num_frames": 2,
                "num_workers": 0,
                "latents": True,
                **data,
            },
            "train": {"batch_size": 1, "max_steps": 2, "lr": 1e-4, "weight_decay": 0.0, **(train or {})},
            "run": {"output_dir": str(out), "checkpoint_every": 100, "validate_every": 0},
        }
    )


def test_preprocess_caches_log_mel_features_and_codec_latents(dataset):
    summary = json.loads((dataset / mf.SUMMARY).read_text())
    assert summary["clips_kept"] == summary["clips_with_audio_features"] == summary["clips_with_latents"] == 1
    recorded = json.loads((dataset / mf.DATASET_CONFIG).read_text())
    codec = load_codec(TAEF2)
    assert recorded["audio_encoder"] == LogMelFrontEnd().fingerprint()
    assert recorded["codec"] == codec.fingerprint()
    # The cache holds what the codec makes of the stored frames (float16).
    (clip,) = mf.read_manifest(dataset)
    with np.load(dataset / clip["path"] / "meta.npz") as meta:
        frames = read_frames(dataset / clip["path"], [0, 7], meta["frame_offsets"])
    with torch.no_grad():
        expected = codec.encode(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1)
    item = Stage1Dataset(dataset, latents=True)[7]
    assert item["target_latent"].shape == (32, 16, 16)
    torch.testing.assert_close(item["target_latent"], expected[1], atol=2e-2, rtol=1e-2)
    video = VideoClipDataset(dataset, num_motion_frames=1, num_frames=2, latents=True)[0]
    assert video["latents"].shape == (3, 32, 16, 16) and video["audio"].shape == (2, 5, 4, 80)


def test_preprocess_run_again_on_a_dataset_with_latents_resumes(dataset):
    """train_small.sh runs `emo preprocess` again on every resume: the recorded codec is not a changed option."""
    from emo.cli import main

    before = (dataset / mf.DATASET_CONFIG).read_text()
    args = ["preprocess", str(DATA / "hdtf_speech_256_4s.mp4"), "--out", str(dataset), "--size", "128",
            "--fps", "10", "--min-clip", "1", "--audio-encoder", LOG_MEL, "--codec", TAEF2]  # fmt: skip
    assert main(args) == 0
    assert (dataset / mf.DATASET_CONFIG).read_text() == before
    assert json.loads((dataset / mf.SUMMARY).read_text())["clips_with_latents"] == 1


def test_training_from_cached_latents_matches_encoding_the_frames(dataset, tmp_path):
    cached = Trainer(small_config(dataset, 1, tmp_path / "cached", {})).fit()
    encoded = Trainer(small_config(dataset, 1, tmp_path / "encoded", {}, latents=False)).fit()
    assert cached.losses.keys() == encoded.losses.keys() == {1, 2}
    for step in cached.losses:  # the same batches; only the float16 storage of the latents differs
        assert cached.losses[step] == pytest.approx(encoded.losses[step], rel=2e-2)


def test_latents_from_another_codec_or_none_are_refused(dataset, tmp_path):
    from emo.codec.tiny_autoencoder import load_taef2

    other = load_taef2()
    with torch.no_grad():
        next(other.parameters()).add_(0.01)
    other.save(tmp_path / "other_codec")
    cfg = small_config(dataset, 1, tmp_path / "run", {})
    cfg.codec = str(tmp_path / "other_codec")
    with pytest.raises(EmoError, match="another codec"):
        Trainer(cfg).fit()
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / mf.DATASET_CONFIG).write_text("{}")
    with pytest.raises(EmoError, match="--add-latents"):
        Trainer(small_config(bare, 1, tmp_path / "run2", {})).fit()


@pytest.fixture(scope="module")
def stage1_run(dataset, tmp_path_factory) -> Path:
    return Trainer(small_config(dataset, 1, tmp_path_factory.mktemp("stage1") / "run", {})).fit().run_dir


def test_exported_model_carries_its_codec_and_audio_front_end(dataset, stage1_run, tmp_path):
    from emo.cli import main
    from emo.codec import TinyAutoencoderCodec
    from emo.generation.pipeline import EMOPipeline, GenerationOptions
    from emo.media import probe_video

    stage2 = small_config(
        dataset, 2, tmp_path / "stage2", {"checkpoint": str(stage1_run)}, {"mouth_weight": 4.0}
    )
    Trainer(stage2).fit()
    # The run keeps its dataset's front-end record, so the export has it even once the dataset has moved (or
    # export runs in another directory than training, for a relative data.dataset).
    run_config = tmp_path / "stage2" / "config.json"
    moved = {**json.loads(run_config.read_text()), "data": {"dataset": str(tmp_path / "moved")}}
    run_config.write_text(json.dumps(moved))
    out = tmp_path / "weights"
    assert main(["train", "export", str(tmp_path / "stage2"), "--out", str(out), "--half"]) == 0
    assert json.loads((out / FRONT_END_RECORD).read_text())["kind"] == "log_mel"
    pipe = EMOPipeline.from_weights(out)  # codec/ and audio_front_end.json from inside the directory
    assert isinstance(pipe.codec, TinyAutoencoderCodec) and pipe.codec.latent_channels == 32
    assert isinstance(pipe.audio_encoder, LogMelFrontEnd)
    assert (pipe.model.denoised, pipe.model.residual_scale) == (
        "residual",
        2.0,
    )  # the preset's, kept by export
    assert next(EMOPipeline.from_weights(out).model.parameters()).dtype == torch.float32  # computes as asked
    video = tmp_path / "out.mp4"
    opts = GenerationOptions(steps=2, size=128, fps=10, clip_frames=2, motion_frames=1)
    result = pipe.generate(
        DATA / "portrait_child_photo.jpg", DATA / "speech_en_24k_3s.wav", video, opts, progress=False
    )
    info = probe_video(video)
    assert (info.width, info.height) == (128, 128) and result.frames == info.num_frames == 30
    # A wav2vec2 folder for a model trained on log-mel features is a one-line error, not a silent mismatch.
    with pytest.raises(EmoError, match="trained with log_mel"):
        EMOPipeline.from_weights(out, audio_encoder=tmp_path)


def test_a_dataset_of_another_audio_front_end_is_refused(dataset, stage1_run, tmp_path):
    """Stage 2 from a checkpoint trained on log-mel features refuses a dataset of other features, naming both,
    before anything is built or written; so does a validation dataset of other features."""
    import shutil

    other = tmp_path / "other"
    shutil.copytree(dataset, other)
    settings = json.loads((other / mf.DATASET_CONFIG).read_text())
    settings["audio_encoder"] = "sha256:" + "0" * 64  # features of some wav2vec2
    (other / mf.DATASET_CONFIG).write_text(json.dumps(settings))
    assert json.loads((stage1_run / FRONT_END_RECORD).read_text())["kind"] == "log_mel"
    with pytest.raises(EmoError, match=r"trained with log_mel audio features .* are wav2vec2"):
        Trainer(small_config(other, 2, tmp_path / "run", {"checkpoint": str(stage1_run)})).fit()
    assert not (tmp_path / "run").exists()
    mixed = small_config(
        dataset, 2, tmp_path / "run2", {"checkpoint": str(stage1_run)}, validation_dataset=str(other)
    )
    with pytest.raises(EmoError, match="different front-ends"):
        Trainer(mixed).fit()


def test_pool_seeds_pools_clip_draws_of_one_model_and_refuses_a_mix(tmp_path):
    import subprocess
    import sys

    script = Path(__file__).parent.parent / "scripts" / "pool_seeds.py"
    weights = tmp_path / "model"
    weights.mkdir()

    def results_file(seed: int, gains: dict, audio_guidance: float = 3.0) -> Path:
        groups = {
            group: {
                "generated": {"psnr": 20.0 + seed, "ssim": 0.6},
                "audio_swap": {"gain": float(np.mean(g)), "per_video": [{"gain": x} for x in g]},
            }
            for group, g in gains.items()
        }
        path = tmp_path / f"seed{seed}_{audio_guidance}.json"
        settings = {
            "seconds": 10.0,
            "steps": 20,
            "audio_guidance": audio_guidance,
            "audio_guidance_region": "mouth",
        }
        path.write_text(json.dumps({"weights": str(weights), "seed": seed, **settings, "groups": groups}))
        return path

    a = results_file(0, {"known": [0.3, -0.1], "unseen": [0.2, 0.0]})
    b = results_file(1, {"known": [0.1, 0.1], "unseen": [-0.2, 0.2]})
    out = tmp_path / "pooled.json"
    done = subprocess.run(
        [sys.executable, str(script), str(a), str(b), "--json", str(out)], capture_output=True
    )
    assert done.returncode == 0, done.stderr
    pooled = json.loads(out.read_text())
    everything = [0.3, -0.1, 0.2, 0.0, 0.1, 0.1, -0.2, 0.2]
    assert pooled["all"]["gain"] == pytest.approx(np.mean(everything))
    assert pooled["all"]["se"] == pytest.approx(np.std(everything, ddof=1) / np.sqrt(8))
    assert pooled["all"]["positive"] == 5 and pooled["all"]["draws"] == 8
    assert pooled["groups"]["known"]["gain"] == pytest.approx(0.1)
    assert pooled["groups"]["known"]["per_seed"] == pytest.approx([0.1, 0.1])
    assert pooled["groups"]["unseen"]["psnr"] == pytest.approx(20.5)

    other_setting = results_file(2, {"known": [0.0], "unseen": [0.0]}, audio_guidance=1.0)
    done = subprocess.run(
        [sys.executable, str(script), str(a), str(other_setting)], capture_output=True, text=True
    )
    assert done.returncode != 0 and "differ in audio_guidance" in done.stderr
    done = subprocess.run([sys.executable, str(script), str(a), str(a)], capture_output=True, text=True)
    assert done.returncode != 0 and "seeds repeat" in done.stderr
