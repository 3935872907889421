#!/usr/bin/env bash
# The paper's active-learning protocol as a pipeline of monolayer commands.
#
# For each strategy (entropy, random) and repeat (seed): make a manifest (test set
# nearest 50 % confluence, random initial training set), then each round
#   train a U-Net from scratch on the training set -> segment and evaluate the test
#   set -> (entropy) segment the pool with probability maps and rank it by entropy
#   -> move the next K images from the pool to the training set,
# until the pool is empty. Finally per-round statistics across repeats and a plot.
#
# Usage: bash examples/al_experiment.sh TRUTH OUT_DIR
#   TRUTH: the labelled images: a folder with images/ and masks/ (e.g. examples/usiigaci),
#   or coco2mask output, e.g.
#     monolayer coco2mask examples/usiigaci/annotations.json --images examples/usiigaci/images \
#         --out truth/ > truth.jsonl
# Settings (environment variables, defaults in brackets): REPEATS [3], EPOCHS [3],
# K [2], INITIAL [2], TEST_SIZE [2], RESIZE [256], BASE_CHANNELS [8], PATCH [128], CROPS [4]
# (random crops per image and epoch).
# On the three shipped example images use: TEST_SIZE=1 INITIAL=1 K=1.
set -euo pipefail

truth="$1"
out="$2"
repeats="${REPEATS:-3}"
epochs="${EPOCHS:-3}"
k="${K:-2}"
initial="${INITIAL:-2}"
test_size="${TEST_SIZE:-2}"
resize="${RESIZE:-256}"
model=(--resize "$resize" --device cpu)
mkdir -p "$out"

for strategy in entropy random; do
  for repeat in $(seq 1 "$repeats"); do
    manifest="$out/${strategy}_rep${repeat}.json"
    monolayer al-round init --images "$truth" --test-size "$test_size" --initial "$initial" \
        --seed "$repeat" --out "$manifest" --force > /dev/null
    round=0
    while :; do
      dir="$out/$strategy/rep$repeat/round$round"
      mkdir -p "$dir"
      monolayer al-round show "$manifest" --set train 2>/dev/null > "$dir/train.jsonl"
      monolayer train --model unet --train "$dir/train.jsonl" --epochs "$epochs" --seed "$repeat" \
          --base-channels "${BASE_CHANNELS:-8}" --patch "${PATCH:-128}" \
          --crops-per-image "${CROPS:-4}" "${model[@]}" -q \
          --out "$dir/unet.pt" > "$dir/log.jsonl"
      monolayer al-round show "$manifest" --set test 2>/dev/null \
        | monolayer segment - -m unet -w "$dir/unet.pt" "${model[@]}" --out "$dir/test" -q \
        | monolayer evaluate - --truth "$truth" --allow-missing -q \
            --tag "strategy=$strategy" --tag "repeat=$repeat" --tag "round=$round" > "$dir/eval.jsonl"
      if [ "$(monolayer al-round show "$manifest" --set pool 2>/dev/null | wc -l)" -eq 0 ]; then
        break
      fi
      if [ "$strategy" = entropy ]; then
        monolayer al-round show "$manifest" --set pool 2>/dev/null \
          | monolayer segment - -m unet -w "$dir/unet.pt" "${model[@]}" --out "$dir/pool" --save-prob -q \
          | monolayer entropy-rank -q > "$dir/ranked.jsonl"
        monolayer al-round next "$manifest" --strategy entropy --k "$k" --ranked "$dir/ranked.jsonl" > /dev/null
      else
        monolayer al-round next "$manifest" --strategy random --k "$k" > /dev/null
      fi
      round=$((round + 1))
    done
    echo "al_experiment: $strategy repeat $repeat: $((round + 1)) rounds" >&2
  done
done

monolayer stats rounds "$out"/*/rep*/round*/eval.jsonl --metric abs_confluence_error \
    --plot "$out/rounds_abs_confluence_error.png" > "$out/rounds_abs_confluence_error.jsonl"
monolayer stats rounds "$out"/*/rep*/round*/eval.jsonl --metric iou \
    --plot "$out/rounds_iou.png" > "$out/rounds_iou.jsonl"
monolayer stats movie "$out"/entropy_rep*.json "$out"/random_rep*.json > "$out/movie.jsonl" || true
echo "al_experiment: results in $out/ (rounds_*.jsonl, rounds_*.png)" >&2
