"""Does a trained stage-2/3 model use the audio, or lean on the motion frames? (issue 12)

    python scripts/audio_use_small.py RUN_DIR CONFIG [--items 24]      # run in WORK_DIR (the config's paths)

The held-out ε-MSE of the validation set's video items, at the same 4 timesteps and noise for every variant:
with the item's own audio, with another item's audio, and with no audio (zeros, the unconditional input); each
with the motion frames and without them (the first clip of a video). A model that uses the audio has a lower
loss with its own audio than with another's; with motion frames present, the gap says whether the audio still
matters once the previous frames are there. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch

from emo.sampling import training_schedule
from emo.training.config import load_config
from emo.training.export import load_trained_model
from emo.training.loss import TrainingModel, denoising_loss
from emo.training.stages import build_dataset, cached_inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run directory or checkpoint (EMA weights)")
    parser.add_argument("config", help="the stage's config (its validation dataset and shapes)")
    parser.add_argument("--items", type=int, default=24)
    args = parser.parse_args()

    cfg = load_config(args.config, [])
    model = load_trained_model(args.run).eval()
    net = TrainingModel(model).eval()
    data = build_dataset(cfg, cfg.data.validation_dataset, seed=0)
    n = min(args.items, len(data))
    items = [cached_inputs(torch.utils.data.default_collate([data[i * len(data) // n]]), cfg, "cpu",
                           torch.float32) for i in range(n)]  # fmt: skip
    schedule = training_schedule()
    losses: dict[str, list[float]] = {}
    with torch.no_grad():
        for motion in ("with motion frames", "without motion frames"):
            plain = dataclasses.replace(cfg.train, drop_reference=0.0, drop_audio=0.0, drop_both=0.0,
                                        drop_motion=0.0 if motion.startswith("with ") else 1.0,
                                        snr_gamma=None)  # fmt: skip
            for audio in ("own audio", "other audio", "no audio"):
                key = f"{audio}, {motion}"
                losses[key] = []
                for i, inputs in enumerate(items):
                    if audio == "other audio":  # the item half the set away: another clip, or far in it
                        inputs = dataclasses.replace(inputs, audio=items[(i + n // 2) % n].audio)
                    elif audio == "no audio":
                        inputs = dataclasses.replace(inputs, audio=torch.zeros_like(inputs.audio))
                    for k in range(4):
                        gen = torch.Generator().manual_seed(1000 * i + k)
                        target = model.to_denoised(inputs.target, inputs.reference)
                        loss = denoising_loss(
                            net,
                            inputs,
                            schedule,
                            schedule.alphas_cumprod,
                            plain,
                            gen,
                            "cpu",
                            target,
                            model.prediction,
                        )
                        losses[key].append(loss.item())
    print(
        json.dumps({"run": args.run, "items": n, **{k: round(sum(v) / len(v), 5) for k, v in losses.items()}})
    )


if __name__ == "__main__":
    main()
