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
# "--fps 25 --size 512" for HDTF), then both are scored against the same reference folder and one
# table with both checkpoints' metrics side by side is printed (and saved as OUT_DIR/comparison.md).
# Full results with notes: OUT_DIR/{a,b}/evaluation.{json,md}.
# PYTHON (default: python) is the interpreter of the environment where emo is installed; the script
# runs "$PYTHON -m emo.cli", so `emo` need not be on the PATH.
set -euo pipefail

usage() {
  # The comment block above, without its "# ", then what was wrong.
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
  echo "error: $1" >&2
  exit 2
}

[ "$#" -ge 4 ] || usage "need TEST_LIST CKPT_A CKPT_B OUT_DIR, got $# argument(s)"
LIST=$1 CKPT_A=$2 CKPT_B=$3 OUT=$4
shift 4
[ -f "$LIST" ] || usage "test list $LIST: no such file"
for ckpt in "$CKPT_A" "$CKPT_B"; do
  [ -d "$ckpt" ] || usage "checkpoint $ckpt: no such directory (give folders written by \`emo train export\`)"
done
PYTHON=${PYTHON:-python}
"$PYTHON" -c "import emo" 2> /dev/null || usage "PYTHON=$PYTHON cannot import emo; set PYTHON to the interpreter of emo's environment"
GENERATE_FLAGS=${EMO_GENERATE_FLAGS:---fps 25 --size 512}

mkdir -p "$OUT/reference"
"$PYTHON" -m emo.cli evaluate protocol reference "$LIST" "$OUT/reference"

for side in a b; do
  ckpt=$CKPT_A
  [ "$side" = b ] && ckpt=$CKPT_B
  mkdir -p "$OUT/$side/videos"
  "$PYTHON" -m emo.cli evaluate protocol jobs "$LIST" "$OUT/$side/videos" > "$OUT/$side/jobs.json"
  # Generation's messages go to stderr: stdout is the comparison table alone.
  # shellcheck disable=SC2086  # GENERATE_FLAGS is a list of flags
  "$PYTHON" -m emo.cli generate --weights "$ckpt" --batch "$OUT/$side/jobs.json" $GENERATE_FLAGS --overwrite >&2
  "$PYTHON" -m emo.cli evaluate --generated "$OUT/$side/videos" --reference "$OUT/reference" \
    --out "$OUT/$side/evaluation.json" --overwrite --no-progress "$@" > /dev/null
done

"$PYTHON" -m emo.cli evaluate report "$OUT/a/evaluation.json" "$OUT/b/evaluation.json" \
  --names "a: $CKPT_A" "b: $CKPT_B" > "$OUT/comparison.md"
cat "$OUT/comparison.md"
echo "full tables with notes: $OUT/a/evaluation.md and $OUT/b/evaluation.md" >&2
