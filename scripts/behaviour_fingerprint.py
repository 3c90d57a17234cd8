"""Behaviour fingerprint of a refactor: tiny `emo generate` mp4 sha256s (DDIM; DPM++ with both guidance scales)
and a short tiny stage-1 + stage-2 training run (losses per step, validation losses, validation sample sha256s).

    .venv/bin/python scripts/behaviour_fingerprint.py OUT_DIR

Compare OUT_DIR/fingerprint.json with a run made before the change: a pure refactor leaves it identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # models_helpers: the tests' tiny SD1.5 UNet

import torch  # noqa: E402

from emo.data.dataset_config import PreprocessConfig  # noqa: E402
from emo.data.preprocess import run_preprocess  # noqa: E402
from emo.generation.pipeline import EMOPipeline, GenerationOptions  # noqa: E402
from emo.tiny import tiny_audio_model, tiny_vae  # noqa: E402
from emo.training.config import config_from_dict  # noqa: E402
from emo.training.trainer import Trainer  # noqa: E402
from models_helpers import tiny_diffusers_unet  # noqa: E402


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stage(root: Path, number: int, init: dict):
    return config_from_dict({
        "stage": number, "model": "tiny", "codec": str(root / "vae"), "init": init,
        "data": {"dataset": str(root / "dataset"), "num_motion_frames": 2, "num_frames": 4, "num_workers": 0},
        "train": {"batch_size": 2, "max_steps": 4, "lr": 1e-4, "weight_decay": 0.0},
        "run": {"output_dir": str(root / f"s{number}"), "checkpoint_every": 100, "validate_every": 2,
                "validation_steps": 3},
    })  # fmt: skip


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    result = {}
    pipe = EMOPipeline.tiny()
    runs = {
        "ddim": GenerationOptions(steps=4, size=128, seed=3),
        "dpmpp_guided": GenerationOptions(steps=3, size=128, seed=5, sampler="dpm++", reference_guidance=1.5,
                                          audio_guidance=2.0),
    }  # fmt: skip
    for name, opts in runs.items():
        video = out / f"{name}.mp4"
        pipe.generate(REPO / "examples/portrait.jpg", REPO / "tests/data/speech_en_24k_3s.wav", video, opts,
                      overwrite=True, progress=False)  # fmt: skip
        result[f"generate_{name}"] = sha(video)

    root = out / "train"
    shutil.rmtree(root, ignore_errors=True)
    tiny_diffusers_unet().save_pretrained(root / "sd15" / "unet")
    tiny_vae().save_pretrained(root / "vae", safe_serialization=True)
    tiny_audio_model().save_pretrained(root / "wav2vec2", safe_serialization=True)
    run_preprocess([REPO / "tests/data/hdtf_speech_256_4s.mp4"], root / "dataset",
                   PreprocessConfig(size=64, min_clip_s=1.0, max_clip_s=4.0), audio_encoder=str(root / "wav2vec2"),
                   progress=False)  # fmt: skip
    torch.set_num_threads(1)
    first = Trainer(stage(root, 1, {"sd15": str(root / "sd15")})).fit()
    second = Trainer(stage(root, 2, {"checkpoint": str(first.last_checkpoint)})).fit()
    result["stage1_losses"], result["stage2_losses"] = first.losses, second.losses
    for run in ("s1", "s2"):
        records = [json.loads(line) for line in (root / run / "metrics.jsonl").read_text().splitlines()]
        result[f"{run}_metrics_val"] = [r["validation_loss"] for r in records if "validation_loss" in r]
        result[f"{run}_samples"] = {p.name: sha(p) for p in sorted((root / run / "samples").glob("*.mp4"))}
    (out / "fingerprint.json").write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":  # preprocessing workers are spawned: they must not rerun this
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/behaviour_fingerprint.py OUT_DIR")
    main(Path(sys.argv[1]))
