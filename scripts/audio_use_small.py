"""Does a trained stage-2/3 model use the audio, or lean on the motion frames? (issue 12)

    python scripts/audio_use_small.py RUN_DIR CONFIG [--items 24] [--mouth-reader FILE]    # in WORK_DIR

The held-out loss (the squared error of the network's ε or v) of the validation set's video items, at the same
4 timesteps and noise for every variant: with the item's own audio, with another item's audio, and with no audio
(zeros, the unconditional input); each with the motion frames and without them (the first clip of a video);
over the whole frame and over the mouth box alone. A model that uses the audio has a lower mouth loss with its
own audio than with another's: the paired gap (other - own) is printed with its standard error, over all
timesteps and over the noisier half, where the mouth cannot be read from z_t; so is the gap to no audio. With
motion frames present, the gap says whether the audio still matters once the previous frames are there. A
network whose audio path is untrained (stage 1) has a gap of exactly 0. With --mouth-reader (a file of
scripts/fit_mouth_reader.py), the same for the error of the mouth's opening in the x0 the network implies, read
by the mouth reader (in standard deviations of the training set's openings, squared). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import torch

from emo.conditioning.mouth import MouthReader
from emo.sampling import NUM_TRAIN_TIMESTEPS, training_schedule
from emo.training.config import load_config
from emo.training.export import load_trained_model
from emo.training.loss import TrainingModel, mouth_error, noised_batch, predict, x0_error
from emo.training.mouth_reading import reading_error
from emo.training.stages import build_dataset, cached_inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run directory or checkpoint (EMA weights)")
    parser.add_argument("config", help="the stage's config (its validation dataset and shapes)")
    parser.add_argument("--items", type=int, default=24)
    parser.add_argument(
        "--mouth-reader", help="also the error of the mouth's opening read by this mouth reader"
    )
    args = parser.parse_args()

    cfg = load_config(args.config, [])
    model = load_trained_model(args.run).eval()
    net = TrainingModel(model).eval()
    data = build_dataset(cfg, cfg.data.validation_dataset, seed=0)
    n = min(args.items, len(data))
    items = [cached_inputs(torch.utils.data.default_collate([data[i * len(data) // n]]), cfg, "cpu",
                           torch.float32) for i in range(n)]  # fmt: skip
    schedule = training_schedule()
    reader = MouthReader.load(args.mouth_reader) if args.mouth_reader else None
    full: dict[str, list[float]] = {}
    mouth: dict[str, list[float]] = {}
    opening: dict[str, list[float]] = {}
    noisy_half: list[bool] = []
    with torch.no_grad():
        for motion in ("with motion frames", "without motion frames"):
            plain = dataclasses.replace(cfg.train, drop_reference=0.0, drop_audio=0.0, drop_both=0.0,
                                        drop_motion=0.0 if motion.startswith("with ") else 1.0,
                                        snr_gamma=None, min_timestep=0)  # fmt: skip
            for i, inputs in enumerate(items):
                target = model.to_denoised(inputs.target, inputs.reference)
                for k in range(4):  # the same noise and timestep for the three audios
                    gen = torch.Generator().manual_seed(1000 * i + k)
                    batch = noised_batch(inputs, schedule, plain, gen, "cpu", target, model.prediction)
                    if motion.startswith("with "):
                        noisy_half.append(bool(batch.timesteps[0] >= NUM_TRAIN_TIMESTEPS // 2))
                    # another item's audio: the item half the set away (another clip, or far in it)
                    for audio, features in (("own audio", inputs.audio),
                                            ("other audio", items[(i + n // 2) % n].audio),
                                            ("no audio", torch.zeros_like(inputs.audio))):  # fmt: skip
                        difference = predict(net, inputs, batch, features) - batch.wanted
                        error = difference.pow(2)
                        key = f"{audio}, {motion}"
                        full.setdefault(key, []).append(error.mean().item())
                        mouth.setdefault(key, []).append(mouth_error(error, inputs.mouth).item())
                        if reader is not None:
                            x0 = x0_error(
                                difference, schedule.alphas_cumprod, batch.timesteps, model.prediction
                            )
                            read = reading_error(
                                x0 / model.denoised_scale,
                                inputs.mouth,
                                reader,
                                torch.ones(1, dtype=torch.bool),
                            )
                            opening.setdefault(key, []).append(read.item())
    report = {"run": args.run, "items": n, "draws": len(noisy_half)}
    report["loss"] = {k: round(float(np.mean(v)), 5) for k, v in full.items()}
    half = np.array(noisy_half)
    measured = (
        {"mouth loss": mouth, "opening error (mouth reader)": opening} if reader else {"mouth loss": mouth}
    )
    for what, values in measured.items():
        report[what] = {k: round(float(np.mean(v)), 5) for k, v in values.items()}
        for name, pick in (("less noisy half", ~half), ("noisier half", half)):
            report[f"{what}, {name}"] = {
                k: round(float(np.mean(np.array(v)[pick])), 5) for k, v in values.items()
            }
        # the paired gaps, with their standard errors: other audio - own audio (> 0 if the audio is used), and
        # no audio - own audio (a network that hears also does better with its own audio than with none)
        for motion in ("with motion frames", "without motion frames"):
            own = np.array(values[f"own audio, {motion}"])
            for versus in ("other audio", "no audio"):
                gap = np.array(values[f"{versus}, {motion}"]) - own
                for name, pick in (("all timesteps", slice(None)), ("noisier half", half)):
                    g = gap[pick]
                    report[f"{what}: {versus} - own, {motion}, {name}"] = {
                        "mean": round(float(g.mean()), 5),
                        "stderr": round(float(g.std(ddof=1) / np.sqrt(len(g))), 5),
                        "relative": round(float(g.mean() / np.mean(own[pick])), 4),
                    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
