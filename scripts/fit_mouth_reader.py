"""Fit the mouth reader that `train.mouth_reading` reads the predicted frames with (emo.training.mouth_reading).

    python scripts/fit_mouth_reader.py DATASET OUT.safetensors [--held-out DATASET ...] [--ridge 1e3]

DATASET: a preprocessed dataset with latents (`emo preprocess --codec ...`), the training set. The reader is a
ridge regression from the latents around each frame's mouth to its opening (Face Mesh's inner-lip gap over the
inter-ocular distance). Prints one JSON object: its fit on DATASET and, per clip, Pearson r on each --held-out
dataset, and the share of the mouth latents' frame-to-frame variance that the opening explains. Then set
train.mouth_reader=OUT and train.mouth_reading=WEIGHT in a stage 2/3 config.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from emo.errors import EmoError
from emo.training.mouth_reading import clip_crops, clips_of, fit_mouth_reader, score_mouth_reader


def opening_share(dataset: str) -> float:
    """The share of the mouth crops' frame-to-frame variance that the opening explains linearly, within each clip
    (frame-weighted mean over clips): how much of what the plain MSE sees at the mouth is the opening."""
    shares, weights = [], []
    for clip in clips_of(dataset):
        crops, opening = clip_crops(clip)
        x = crops.double().numpy()
        x = x - x.mean(0)
        design = np.stack([np.ones_like(opening), opening], 1)
        residual = x - design @ np.linalg.lstsq(design, x, rcond=None)[0]
        shares.append(1 - (residual**2).sum() / (x**2).sum())
        weights.append(len(opening))
    return float(np.average(shares, weights=weights))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", help="the training set (preprocessed, with latents)")
    parser.add_argument("out", help="where to write the reader (.safetensors)")
    parser.add_argument(
        "--held-out", nargs="*", default=[], metavar="DATASET", help="datasets to score it on"
    )
    parser.add_argument(
        "--ridge", type=float, default=1e3, help="L2 penalty (1e3: best held-out r of 1e1..1e4)"
    )
    args = parser.parse_args()
    try:
        reader, fit = fit_mouth_reader(args.dataset, args.ridge)
        report = {
            "fit": fit,
            "held out r per clip": {d: score_mouth_reader(reader, d) for d in args.held_out},
            "opening's share of the mouth crops' variance": round(opening_share(args.dataset), 3),
        }
        reader.save(args.out)
    except EmoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
