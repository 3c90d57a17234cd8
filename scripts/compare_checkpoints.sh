#!/usr/bin/env bash
# Compare two EMO checkpoints on one test list (docs/evaluation.md).
#
#   scripts/compare_checkpoints.sh TEST_LIST CKPT_A CKPT_B OUT_DIR [emo evaluate flags...]
#
# e.g. scripts/compare_checkpoints.sh hdtf_test.json runs/a/export runs/b/export cmp \
#        --inception w/pt_inception-2015-12-05-6726825d.pth --syncnet w/syncnet_v2.model \
#        --arcface w/backbone.pth --deep3d w/epoch_20.pth --i3d w/i3d_torchscript.pt
#
# Both checkpoints generate every item of the test list with the same fixed seeds (the list's "seed",
# else the item's index), at the ground truth's frame rate and size (EMO_GENERATE_FLAGS, default
# "--fps 25 --size 512" for HDTF), then both are scored against the same reference folder and both
# tables are printed. Results: OUT_DIR/{a,b}/evaluation.{json,md}.
set -euo pipefail

if [ "$#" -lt 4 ]; then
  sed -n '2,13p' "$0" >&2
  exit 2
fi
LIST=$1 CKPT_A=$2 CKPT_B=$3 OUT=$4
shift 4
GENERATE_FLAGS=${EMO_GENERATE_FLAGS:---fps 25 --size 512}

mkdir -p "$OUT/reference"
python -m emo.eval.protocol reference "$LIST" "$OUT/reference"

for side in a b; do
  ckpt=$CKPT_A
  [ "$side" = b ] && ckpt=$CKPT_B
  mkdir -p "$OUT/$side/videos"
  python -m emo.eval.protocol jobs "$LIST" "$OUT/$side/videos" > "$OUT/$side/jobs.json"
  # shellcheck disable=SC2086  # GENERATE_FLAGS is a list of flags
  emo generate --weights "$ckpt" --batch "$OUT/$side/jobs.json" $GENERATE_FLAGS --overwrite
  emo evaluate --generated "$OUT/$side/videos" --reference "$OUT/reference" \
    --out "$OUT/$side/evaluation.json" --overwrite --no-progress "$@" > /dev/null
done

for side in a b; do
  ckpt=$CKPT_A
  [ "$side" = b ] && ckpt=$CKPT_B
  echo "# $side: $ckpt"
  cat "$OUT/$side/evaluation.md"
  echo
done
