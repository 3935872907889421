#!/usr/bin/env bash
# The whole classical pipeline on the shipped example images:
#   COCO polygons -> truth masks -> segmentation -> evaluation -> statistics.
# Usage: bash examples/pipeline.sh [OUT_DIR]      (default: ./pipeline-out)
# Needs `monolayer` on PATH (pip install -e . in the repository root).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
data="$here/usiigaci"
out="${1:-pipeline-out}"
mkdir -p "$out"

# 1. Ground truth: one uint16 instance-label TIFF per image, one JSON record each.
monolayer coco2mask "$data/annotations.json" --images "$data/images" --out "$out/truth" > "$out/truth.jsonl"

# 2. Segment with the default classical method and with the paper's Canny baseline.
monolayer segment "$data/images" --out "$out/phase" --save-prob > "$out/pred_phase.jsonl"
monolayer segment "$data/images" --method canny --out "$out/canny" > "$out/pred_canny.jsonl"

# 3. Evaluate each against the truth; images are matched by content checksum, not order.
monolayer evaluate "$out/pred_phase.jsonl" --truth "$out/truth.jsonl" --quiet > "$out/eval_phase.jsonl"
monolayer evaluate "$out/pred_canny.jsonl" --truth "$out/truth.jsonl" --quiet > "$out/eval_canny.jsonl"

# 4. Mean, std, median and IQR of the confluence error and IoU per method.
cat "$out/eval_phase.jsonl" "$out/eval_canny.jsonl" \
  | monolayer stats - --by method --field abs_confluence_error --field iou > "$out/summary.jsonl"
cat "$out/eval_phase.jsonl" "$out/eval_canny.jsonl" \
  | monolayer stats - --by method --field abs_confluence_error --field iou --format table

# A scripted check, as a cron job would run it: exit 1 if the mean error exceeds 0.06.
monolayer evaluate "$out/pred_phase.jsonl" --truth "$out/truth.jsonl" --quiet --fail-over 0.06 > /dev/null
echo "pipeline done: results in $out/" >&2
