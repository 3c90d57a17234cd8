"""Choose the `small` model's width from a short pilot of each candidate (issue 12): stage 1 from scratch for
the same wall-clock time, then the held-out loss, so the choice weighs learning per step against step cost.

    python scripts/pilot_small.py DATA_DIR [MINUTES]      # DATA_DIR: train/ and val_known/ as train_small.sh makes

Prints one JSON line per candidate: parameters, steps done, s/step, held-out loss (mean over 32 validation
items x 4 fixed timesteps, no condition dropout).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import torch

from emo.codec import TAEF2, load_codec
from emo.config import small
from emo.models import EMO
from emo.training.config import config_from_dict
from emo.training.loss import TrainingModel, denoising_loss
from emo.training.stages import build_dataset, cached_inputs
from emo.training.trainer import Trainer

CANDIDATES = {"64-128-256": (64, 128, 256), "32-64-128": (32, 64, 128)}


@torch.no_grad()
def held_out_loss(model: EMO, cfg, items: int = 32) -> float:
    """Mean ε-MSE over the first `items` validation items, 4 fixed timesteps each, no dropout."""
    data = build_dataset(cfg, cfg.data.validation_dataset, seed=0)
    plain = dataclasses.replace(
        cfg.train, drop_reference=0.0, drop_audio=0.0, drop_both=0.0, drop_motion=0.0, snr_gamma=None
    )
    from emo.sampling import training_schedule

    schedule = training_schedule()
    net = TrainingModel(model).eval()
    losses = []
    for i in range(min(items, len(data))):
        batch = torch.utils.data.default_collate([data[i]])
        inputs = cached_inputs(batch, cfg, "cpu", torch.float32)
        for k in range(4):
            gen = torch.Generator().manual_seed(1000 * i + k)
            losses.append(
                denoising_loss(net, inputs, schedule, schedule.alphas_cumprod, plain, gen, "cpu").item()
            )
    model.train()
    return sum(losses) / len(losses)


def config(data: Path, output_dir: str, max_steps: int):
    return config_from_dict(
        {
            "stage": 1,
            "model": "small",
            "codec": TAEF2,
            "data": {
                "dataset": str(data / "train"),
                "validation_dataset": str(data / "val_known"),
                "size": 128,
                "latents": True,
                "num_workers": 0,
            },
            "train": {
                "batch_size": 8,
                "max_steps": max_steps,
                "lr": 2e-4,
                "warmup_steps": 50,
                "weight_decay": 0.0,
                "snr_gamma": 5.0,
            },
            "run": {"output_dir": output_dir, "checkpoint_every": 10**9, "validate_every": 0},
        }
    )


def build(channels) -> EMO:
    torch.manual_seed(0)
    return EMO.from_config(
        dataclasses.replace(small(), block_out_channels=channels, norm_num_groups=min(32, channels[0] // 2))
    )


def main(data: Path, minutes: float) -> None:
    torch.set_num_threads(2)
    codec = load_codec(TAEF2)
    for name, channels in CANDIDATES.items():
        with tempfile.TemporaryDirectory() as tmp:
            timing = Trainer(config(data, f"{tmp}/timing", 12), codec=codec, model=build(channels)).fit()
            s_per_step = (
                sum(
                    json.loads(line)["step_s"]
                    for line in (timing.run_dir / "metrics.jsonl").read_text().splitlines()[2:]
                )
                / 10
            )
            steps = max(50, int(minutes * 60 / s_per_step))
            model = build(channels)
            Trainer(config(data, f"{tmp}/run", steps), codec=codec, model=model).fit()
            print(
                json.dumps(
                    {
                        "channels": name,
                        "backbone_M": round(sum(p.numel() for p in model.backbone.parameters()) / 1e6, 1),
                        "steps": steps,
                        "s_per_step": round(s_per_step, 3),
                        "held_out_loss": round(held_out_loss(model, config(data, tmp, 1)), 4),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python scripts/pilot_small.py DATA_DIR [MINUTES]")
    main(Path(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) == 3 else 5.0)
