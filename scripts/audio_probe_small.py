"""How much of the mouth can the audio features tell at all? A ridge-regression probe (issue 12).

    python scripts/audio_probe_small.py DATA_DIR          # WORK_DIR/data/small of scripts/train_small.sh

Fits a linear map from each frame's window of audio features (the ±2 frames the audio projector reads, as
the dataset stores them) to the frame's mouth opening (inner-lip gap / inter-ocular distance, from the
dataset's Face Mesh landmarks), on train/, and scores it on val_known/ and val_unseen/: Pearson r between the
predicted and the real opening per clip, beside the control of the same probe fed another clip's audio. It
bounds what the network's audio path could learn from these features; no diffusion is involved. Prints one
JSON object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file

from emo.conditioning.windows import window
from emo.eval.mouth import pearson
from emo.training.mouth_reading import clip_openings, clips_of, own_and_swapped_r, ridge_fit

WINDOW = 2  # frames either side: the projector's ±m


def clip_arrays(clip: Path) -> tuple[np.ndarray, np.ndarray]:
    """(F, (2m+1)·L·D) windowed audio features, (F,) mouth opening (NaN where the face was not found)."""
    opening = clip_openings(clip)
    feats = torch.from_numpy(load_file(str(clip / "audio_features.safetensors"))["features"])  # (F, L, D)
    windows = window(feats.double(), WINDOW).flatten(1).numpy()  # (F, (2m+1)·L·D), as the dataset windows it
    return windows, opening


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument(
        "--ridge",
        type=float,
        default=1e4,
        help="L2 penalty of the probe (1e4: the best held-out r of 1e2..1e5)",
    )
    args = parser.parse_args()

    train = [clip_arrays(c) for c in clips_of(args.data / "train")]
    x = np.concatenate([f for f, _ in train])
    y = np.concatenate([o for _, o in train])
    ok = np.isfinite(y)
    x, y = x[ok], y[ok]
    mean, std, w = ridge_fit(x, y - y.mean(), args.ridge)

    def predict(f: np.ndarray) -> np.ndarray:
        return ((f - mean) / std) @ w + y.mean()

    report = {"train frames": int(ok.sum()), "train r": round(pearson(predict(x), y), 3)}
    for group in ("val_known", "val_unseen"):
        held = [clip_arrays(c) for c in clips_of(args.data / group)]
        own, other = own_and_swapped_r([predict(f) for f, _ in held], [o for _, o in held])
        report[group] = {"clips": len(held), "own audio r": round(float(np.mean(own)), 3),
                         "per clip": [round(r, 3) for r in own],
                         "control: other clip's audio r": round(float(np.mean(other)), 3)}  # fmt: skip
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
