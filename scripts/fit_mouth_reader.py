"""Fit the mouth reader that `train.mouth_reading` reads the predicted frames with (emo.training.mouth_reading).

    python scripts/fit_mouth_reader.py DATASET OUT.safetensors [--held-out DATASET ...] [--ridge 1e3]

DATASET: a preprocessed dataset with latents (`emo preprocess --codec ...`), the training set. The reader is a
ridge regression from the latents around each frame's mouth to its opening (Face Mesh's inner-lip gap over the
inter-ocular distance). Prints one JSON object: its fit on DATASET and, per clip, Pearson r on each --held-out
dataset. Then set train.mouth_reader=OUT and train.mouth_reading=WEIGHT in a stage 2/3 config.
"""

from __future__ import annotations

import argparse
import json
import sys

from emo.errors import EmoError
from emo.training.mouth_reading import fit_mouth_reader, score_mouth_reader


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
        }
        reader.save(args.out)
    except EmoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
