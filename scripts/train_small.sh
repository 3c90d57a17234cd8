#!/usr/bin/env bash
# Train the `small` model (EMO.md §8) through stages 1 -> 2 -> 3 from a folder of talking-head videos, and
# export it. Resumable: run it again and every step continues where it stopped (split, preprocessing and
# each stage's checkpoints are kept in WORK_DIR).
#
#   bash scripts/train_small.sh VIDEOS_DIR [WORK_DIR]       # WORK_DIR defaults to ~/emo-small (outside the repo)
#
# VIDEOS_DIR: the talking-head clips (here: shared/data/talking_heads). Held out, never trained on: the last
# 10 s of the three long clips and three whole short clips (scripts/holdout_split.py).
# Extra arguments for every `emo train` call can be given in EMO_TRAIN_ARGS (e.g. "train.max_steps=100").
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: bash scripts/train_small.sh VIDEOS_DIR [WORK_DIR]" >&2
  exit 2
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
videos=$(cd "$1" && pwd)
work=${2:-$HOME/emo-small}
python="$repo/.venv/bin/python"
emo=("$python" -m emo.cli)
mkdir -p "$work"
cd "$work"

if [ ! -f split/.done ]; then
  "$python" "$repo/scripts/holdout_split.py" "$videos" split
  touch split/.done
fi
for part in train val_known val_unseen; do
  "${emo[@]}" preprocess "split/$part" --out "data/small/$part" --size 128 --min-clip 2 --workers 2 \
    --audio-encoder log-mel --codec taef2 > "preprocess_$part.json"
done
for stage in 1 2 3; do
  # shellcheck disable=SC2086
  "${emo[@]}" train "$repo/configs/stage${stage}_small.yaml" ${EMO_TRAIN_ARGS:-} --resume auto
done
"${emo[@]}" train export runs/small/stage3 --out export/small --half --overwrite
# The mouth guide (the lips follow the speech; emo.conditioning.mouth), fitted on the training clips.
"$python" "$repo/scripts/fit_mouth_guide.py" data/small/train export/small \
  --held-out data/small/val_known data/small/val_unseen > mouth_guide.json
echo "trained model: $work/export/small (emo generate --weights $work/export/small ...)"
