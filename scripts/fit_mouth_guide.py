"""Fit a model's mouth guide: what moves its generated lips with the speech (emo.conditioning.mouth).

    python scripts/fit_mouth_guide.py DATASET MODEL_DIR [--held-out DATASET ...] [--half-window 2]

DATASET: a preprocessed dataset with latents (`emo preprocess --codec ...`), the training set, preprocessed with
the model's codec and audio front-end. MODEL_DIR: the model folder (`emo train export`); the guide is written to
MODEL_DIR/mouth_guide.safetensors, and `emo generate --weights MODEL_DIR` uses it (`--mouth-guidance 0`: off).
Prints one JSON object: the fit on DATASET and, per --held-out dataset, Pearson r per clip of the opening the
mouth reader reads from the latents and of the opening the audio reader predicts from the audio, each against
the real one (Face Mesh's inner-lip gap over the inter-ocular distance), beside the control of the audio
reader fed the next clip's audio.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from emo.conditioning.mouth import MOUTH_GUIDE
from emo.errors import EmoError
from emo.training.mouth_reading import (
    clip_audio,
    clip_openings,
    clips_of,
    fit_mouth_guide,
    own_and_swapped_r,
    score_mouth_reader,
)


def score_audio_reader(guide, dataset: str) -> dict:
    clips = clips_of(dataset)
    predicted = [guide.audio.read_track(clip_audio(c)).numpy() for c in clips]
    own, other = own_and_swapped_r(predicted, [clip_openings(c) for c in clips])
    return {
        "own audio r": [round(r, 3) for r in own],
        "control: next clip's audio r": [round(r, 3) for r in other],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", help="the training set (preprocessed, with latents)")
    parser.add_argument("model", type=Path, help="the model folder to write mouth_guide.safetensors into")
    parser.add_argument(
        "--held-out", nargs="*", default=[], metavar="DATASET", help="datasets to score it on"
    )
    parser.add_argument(
        "--half-window", type=int, default=2, help="audio frames either side (default 2, as the projector)"
    )
    parser.add_argument("--audio-ridge", type=float, default=1e4, help="L2 penalty of the audio reader")
    args = parser.parse_args()
    try:
        if not args.model.is_dir():
            raise EmoError(f"{args.model}: no such model folder")
        guide, fit = fit_mouth_guide(args.dataset, args.half_window, args.audio_ridge)
        report = {"fit": fit}
        for dataset in args.held_out:
            report[dataset] = {
                "mouth reader r": score_mouth_reader(guide.reader, dataset),
                **score_audio_reader(guide, dataset),
            }
        guide.save(args.model / MOUTH_GUIDE)
    except EmoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
