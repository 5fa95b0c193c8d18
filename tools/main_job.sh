#!/usr/bin/env bash
# README command 1: set up, generate the synthetic dataset, build its MAPS memory banks,
# train the tiny Mask2Former on CPU, test it next to its untrained initialisation, print
# PQ/AP/mIoU and write a PNG.
#
#   bash tools/main_job.sh            (MAX_ITERS=1200 WORK_DIR=work_dirs/main_job by default)
set -Eeuo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
CONFIG=${CONFIG:-configs/mask2former/mask2former_r18_synthetic-panoptic.py}
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
python tools/build_memory.py configs/memory/memory_tiled-clip_vit-s16_synthetic-panoptic.py

echo "==> untrained reference"
python tools/misc/init_checkpoint.py "$CONFIG" "$WORK_DIR/untrained/init.pth"
python tools/test.py "$CONFIG" "$WORK_DIR/untrained/init.pth" --work-dir "$WORK_DIR/untrained" \
  >"$WORK_DIR/untrained/test.log" 2>&1 || { tail -n 50 "$WORK_DIR/untrained/test.log"; exit 1; }

echo "==> train ($MAX_ITERS iterations on $(nproc) CPU cores)"
python tools/train.py "$CONFIG" --work-dir "$WORK_DIR/train" --cfg-options \
  train_cfg.max_iters="$MAX_ITERS" train_cfg.val_interval=$((MAX_ITERS + 1)) \
  default_hooks.checkpoint.interval="$MAX_ITERS" param_scheduler.1.end="$MAX_ITERS" \
  "param_scheduler.1.milestones=[$((MAX_ITERS * 85 / 100))]"

echo "==> test"
CKPT=$(cat "$WORK_DIR/train/last_checkpoint")
python tools/test.py "$CONFIG" "$CKPT" --work-dir "$WORK_DIR/test" --show-dir vis \
  --panoptic-out "$WORK_DIR/test/predictions/results"

SHOW_DIR=$(ls -d "$WORK_DIR"/test/*/vis | tail -n 1)
python tools/analysis/make_grid.py "$SHOW_DIR" --out "$WORK_DIR/panoptic_overlay.png" --num 8 --cols 2

echo
python tools/analysis/compare_metrics.py --title "Tiny Mask2Former R18, synthetic val" \
  "untrained=$WORK_DIR/untrained/metrics.json" "trained ($MAX_ITERS it)=$WORK_DIR/test/metrics.json"
echo "overlay (left: ground truth, right: prediction): $WORK_DIR/panoptic_overlay.png"
