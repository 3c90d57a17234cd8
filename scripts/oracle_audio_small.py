"""An oracle for the audio path: a copy of a preprocessed dataset whose audio features are the true mouth opening.

    python scripts/oracle_audio_small.py DATA_DIR OUT_DIR      # DATA_DIR: WORK_DIR/data/small of train_small.sh

Each part (train/, val_known/, val_unseen/) is mirrored under OUT_DIR by symbolic links, except each clip's
audio features: every entry of a frame's (L, D) features becomes its mouth opening (inner-lip gap over
inter-ocular distance, standardised over the training set; 0 where no face was found). Trained on it, the audio
path is handed the answer to what the audio could at best tell; if the network still does not use it, the
audio features are not what holds lip sync back (docs/small_model.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from emo.data.clips import AUDIO_FEATURES
from emo.training.mouth_reading import clip_openings, clips_of

PARTS = ("train", "val_known", "val_unseen")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    train = np.concatenate([clip_openings(clip) for clip in clips_of(args.data / "train")])
    mean, std = np.nanmean(train), np.nanstd(train)
    for part in PARTS:
        for path in sorted((args.data / part).rglob("*")):
            copy = args.out / part / path.relative_to(args.data / part)
            if path.is_dir():
                copy.mkdir(parents=True, exist_ok=True)
            elif path.name == AUDIO_FEATURES:
                features = load_file(str(path))["features"]  # (F, L, D)
                oracle = torch.from_numpy(np.nan_to_num((clip_openings(path.parent) - mean) / std)).float()
                save_file({"features": oracle[:, None, None].expand_as(features).contiguous()}, str(copy))
            else:
                copy.parent.mkdir(parents=True, exist_ok=True)
                copy.symlink_to(path.resolve())
    print(f"wrote {args.out} (opening mean {mean:.3f}, std {std:.3f} over the training set)")


if __name__ == "__main__":
    main()
