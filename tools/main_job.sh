#!/usr/bin/env bash
# README command 1: set up, generate the synthetic dataset, build its MAPS memory banks,
# train the tiny Mask2Former baseline and tiny MAPS on CPU (same iterations and seed), test
# both next to the untrained initialisation, print PQ/AP/mIoU side by side, write a PNG.
#
#   bash tools/main_job.sh            (MAX_ITERS=1200 WORK_DIR=work_dirs/main_job by default)
set -Eeuo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BASELINE=${BASELINE:-configs/mask2former/mask2former_r18_synthetic-panoptic.py}
MAPS=${MAPS:-configs/maps/maps_r18_synthetic-panoptic.py}
WORK_DIR=${WORK_DIR:-work_dirs/main_job}
MAX_ITERS=${MAX_ITERS:-1200}
trap 'echo "main_job: FAILED at: $BASH_COMMAND" >&2' ERR

bash tools/setup_env.sh
# shellcheck disable=SC1091
source "${MMMAPS_VENV:-${MMMAPS_CACHE:-$HOME/.cache/mmmaps}/venv}/bin/activate"

echo "==> synthetic dataset"
python tools/dataset_converters/make_synthetic_panoptic.py --out data/synthetic \
  --num-train 400 --num-val 100 --seed 0 --size 128 128

echo "==> MAPS memory of the train split (scene + object banks, query cache; CLIP ViT-S/16)"
python tools/build_memory.py "$MAPS"

echo "==> untrained reference"
python tools/misc/init_checkpoint.py "$BASELINE" "$WORK_DIR/untrained/init.pth"
python tools/test.py "$BASELINE" "$WORK_DIR/untrained/init.pth" --work-dir "$WORK_DIR/untrained" \
  >"$WORK_DIR/untrained/test.log" 2>&1 || { tail -n 50 "$WORK_DIR/untrained/test.log"; exit 1; }

SCHEDULE=(train_cfg.max_iters="$MAX_ITERS" train_cfg.val_interval=$((MAX_ITERS + 1))
  default_hooks.checkpoint.interval="$MAX_ITERS" param_scheduler.1.end="$MAX_ITERS"
  "param_scheduler.1.milestones=[$((MAX_ITERS * 85 / 100))]")
for name in baseline maps; do
  config=$BASELINE; [ "$name" = maps ] && config=$MAPS
  echo "==> train $name: $config ($MAX_ITERS iterations on $(nproc) CPU cores)"
  python tools/train.py "$config" --work-dir "$WORK_DIR/$name/train" --cfg-options "${SCHEDULE[@]}"
  echo "==> test $name"
  python tools/test.py "$config" "$(cat "$WORK_DIR/$name/train/last_checkpoint")" \
    --work-dir "$WORK_DIR/$name/test" --show-dir vis \
    --panoptic-out "$WORK_DIR/$name/test/predictions/results"
done

SHOW_DIR=$(ls -d "$WORK_DIR"/maps/test/*/vis | tail -n 1)
python tools/analysis/make_grid.py "$SHOW_DIR" --out "$WORK_DIR/panoptic_overlay.png" --num 8 --cols 2

echo
python tools/analysis/compare_metrics.py \
  --title "Synthetic val: tiny Mask2Former vs tiny MAPS (R18, same $MAX_ITERS iterations, seed 0)" \
  "untrained=$WORK_DIR/untrained/metrics.json" \
  "Mask2Former=$WORK_DIR/baseline/test/metrics.json" \
  "MAPS=$WORK_DIR/maps/test/metrics.json"
echo "overlay of MAPS (left: ground truth, right: prediction): $WORK_DIR/panoptic_overlay.png"
