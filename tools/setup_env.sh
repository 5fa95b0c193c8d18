#!/usr/bin/env bash
# Create (or reuse) the mmmaps virtual environment and install the pinned stack.
#
#   bash tools/setup_env.sh [--tests] [--optional]
#
# Idempotent: when the venv already holds exactly what the requirement files ask for
# (a stamp records their checksum) and the key imports work, only the editable install
# of this checkout is refreshed, which takes seconds.
#
# Environment variables:
#   MMMAPS_VENV   venv location              (default: ~/.cache/mmmaps/venv)
#   MMMAPS_CACHE  wheel cache and logs       (default: ~/.cache/mmmaps)
#   PYTHON        interpreter for a new venv (default: python3.11)
#   MAX_JOBS      parallel jobs for the mmcv build (default: number of cores)
#
# Print `source "$MMMAPS_VENV/bin/activate"` afterwards to use the environment.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${MMMAPS_CACHE:-$HOME/.cache/mmmaps}
VENV=${MMMAPS_VENV:-$CACHE/venv}
PYTHON=${PYTHON:-python3.11}
REQ=$ROOT/requirements
LOGDIR=$CACHE/logs
mkdir -p "$CACHE" "$LOGDIR"

WANT_TESTS=0
WANT_OPTIONAL=0
for arg in "$@"; do
  case $arg in
    --tests) WANT_TESTS=1 ;;
    --optional) WANT_OPTIONAL=1 ;;
    -h|--help) sed -n 2,17p "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "setup_env: unknown argument '$arg' (expected --tests or --optional)" >&2; exit 2 ;;
  esac
done

STEP="start"
LOG=""
on_error() {
  local rc=$?
  echo >&2
  echo "setup_env: FAILED at step '$STEP' (exit code $rc)." >&2
  if [[ -n $LOG && -f $LOG ]]; then
    echo "setup_env: last lines of $LOG:" >&2
    tail -n 40 "$LOG" >&2
  fi
  exit "$rc"
}
trap on_error ERR

step() { STEP=$1; echo "==> [$(date +%H:%M:%S)] $1"; }

# Run a command with its output in a per-step log (shown on failure).
run_logged() {
  LOG=$LOGDIR/$(echo "$STEP" | tr -c 'A-Za-z0-9\n' '_').log
  echo "    \$ $*"
  "$@" >"$LOG" 2>&1
}

# --- the machine ---------------------------------------------------------------
HAS_GPU=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 \
   && command -v nvcc >/dev/null 2>&1; then
  HAS_GPU=1
fi
FLAVOUR=$([[ $HAS_GPU == 1 ]] && echo cuda || echo cpu)

# Everything that decides what gets installed goes into the stamp.
stamp_of() {
  {
    cat "$@"
    echo "flavour=$FLAVOUR"
    echo "setup_env_version=1"
  } | sha256sum | cut -d' ' -f1
}
STAMP_FILE=$VENV/.mmmaps-stamp
STAMP=$(stamp_of "$REQ/build.txt" "$REQ/mminstall.txt" "$REQ/runtime.txt")

# --- 1. virtual environment ---------------------------------------------------
step "virtual environment ($VENV)"
if [[ ! -x $VENV/bin/python ]]; then
  command -v "$PYTHON" >/dev/null 2>&1 || {
    echo "setup_env: '$PYTHON' not found; install Python 3.11 or set PYTHON=/path/to/python3.11" >&2
    exit 1
  }
  run_logged "$PYTHON" -m venv "$VENV"
fi
PY=$VENV/bin/python
PIP=("$PY" -m pip --disable-pip-version-check)
CONSTRAINTS=(-c "$REQ/build.txt" -c "$REQ/mminstall.txt")

import_check() {
  "$PY" - <<'EOF' >/dev/null 2>&1
import torch, torchvision, mmcv, mmcv.ops, mmcv._ext, mmengine, mmdet, mmseg
import open_clip, faiss, pycocotools, panopticapi
EOF
}

if [[ -f $STAMP_FILE && $(cat "$STAMP_FILE") == "$STAMP" ]] && import_check; then
  echo "    environment is up to date (stamp $STAMP)"
else
  rm -f "$STAMP_FILE"

  # --- 2. torch and build tools first ----------------------------------------
  step "build requirements (torch, setuptools<70, numpy<2)"
  run_logged "${PIP[@]}" install -U "pip<25"
  run_logged "${PIP[@]}" install -r "$REQ/build.txt" -c "$REQ/build.txt"

  # --- 3. mmcv from source with ops ------------------------------------------
  step "mmcv 2.1.0 with ops ($FLAVOUR)"
  MMCV_VERSION=$(sed -n 's/^mmcv==\([0-9.]*\).*/\1/p' "$REQ/mminstall.txt")
  TORCH_KEY=$("$PY" -c "import torch, sys; print(f'torch{torch.__version__}-cu{torch.version.cuda}-py{sys.version_info.major}{sys.version_info.minor}')")
  WHEEL_DIR=$CACHE/wheels/mmcv-$MMCV_VERSION-$TORCH_KEY-ops-$FLAVOUR
  if "$PY" -c "import mmcv, mmcv._ext, sys; sys.exit(mmcv.__version__ != '$MMCV_VERSION')" >/dev/null 2>&1; then
    echo "    mmcv $MMCV_VERSION with ops already installed"
  else
    if ! ls "$WHEEL_DIR"/mmcv-*.whl >/dev/null 2>&1; then
      echo "    building mmcv $MMCV_VERSION from source (about 17 min on 2 cores; log: $LOGDIR)"
      TMP_WHEEL_DIR=$(mktemp -d "$CACHE/wheels.tmp.XXXXXX")
      if [[ $FLAVOUR == cuda ]]; then
        export FORCE_CUDA=1
      else
        export FORCE_CUDA=0
        # nvcc without a GPU must not switch mmcv to a CUDA build.
        export CUDA_VISIBLE_DEVICES=""
      fi
      MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} run_logged \
        "${PIP[@]}" wheel --no-build-isolation --no-deps --no-cache-dir \
        "mmcv==$MMCV_VERSION" -w "$TMP_WHEEL_DIR"
      mkdir -p "$(dirname "$WHEEL_DIR")"
      rm -rf "$WHEEL_DIR"
      mv "$TMP_WHEEL_DIR" "$WHEEL_DIR"  # only a finished build gets the cache name
    else
      echo "    using cached wheel in $WHEEL_DIR"
    fi
    # Two steps: --force-reinstall replaces an mmcv 2.1.0 without ops (pip would call it
    # satisfied), the second pulls mmcv's own dependencies under the constraints.
    run_logged "${PIP[@]}" install --force-reinstall --no-deps "$WHEEL_DIR"/mmcv-*.whl
    run_logged "${PIP[@]}" install "${CONSTRAINTS[@]}" "$(ls "$WHEEL_DIR"/mmcv-*.whl)"
  fi
  step "check mmcv ops import"
  run_logged "$PY" -c "import mmcv, mmcv.ops, mmcv._ext; print('mmcv', mmcv.__version__, 'ops ok')"

  # --- 4. OpenMMLab and the rest ---------------------------------------------
  step "mmengine, mmdet, mmsegmentation"
  run_logged "${PIP[@]}" install "${CONSTRAINTS[@]}" -r "$REQ/mminstall.txt"

  step "runtime requirements (open_clip, faiss, pycocotools, panopticapi)"
  RUNTIME=$(grep -v -E '^\s*(#|$)' "$REQ/runtime.txt" | sed 's/\s*#.*//')
  if [[ $FLAVOUR == cuda ]]; then
    RUNTIME=$(echo "$RUNTIME" | grep -v '^faiss-cpu')
    run_logged "${PIP[@]}" install "${CONSTRAINTS[@]}" $RUNTIME
    step "faiss-gpu (falls back to faiss-cpu)"
    if ! run_logged "${PIP[@]}" install "${CONSTRAINTS[@]}" faiss-gpu-cu12; then
      echo "    faiss-gpu-cu12 failed to install; using faiss-cpu"
      run_logged "${PIP[@]}" install "${CONSTRAINTS[@]}" faiss-cpu
    fi
  else
    run_logged "${PIP[@]}" install "${CONSTRAINTS[@]}" $RUNTIME
  fi
  step "check imports"
  run_logged "$PY" - <<'EOF'
import torch, torchvision, mmcv, mmcv.ops, mmcv._ext, mmengine, mmdet, mmseg
import open_clip, faiss, pycocotools, panopticapi
print('torch', torch.__version__, 'mmcv', mmcv.__version__, 'mmdet', mmdet.__version__,
      'mmseg', mmseg.__version__, 'mmengine', mmengine.__version__, 'faiss', faiss.__version__)
EOF
  cat "$LOG" | sed 's/^/    /'
  echo "$STAMP" >"$STAMP_FILE"
fi

# Optional groups have their own stamps, so alternating `--tests` runs and plain runs
# does not reinstall anything.
install_group() {  # install_group NAME FILE
  local group_stamp_file=$VENV/.mmmaps-stamp-$1 group_stamp
  group_stamp=$(stamp_of "$2" "$STAMP_FILE")
  if [[ -f $group_stamp_file && $(cat "$group_stamp_file") == "$group_stamp" ]]; then
    echo "    $1 requirements are up to date"
  else
    run_logged "${PIP[@]}" install "${CONSTRAINTS[@]}" -r "$2"
    echo "$group_stamp" >"$group_stamp_file"
  fi
}
if [[ $WANT_TESTS == 1 ]]; then
  step "test requirements"
  install_group tests "$REQ/tests.txt"
fi
if [[ $WANT_OPTIONAL == 1 ]]; then
  step "optional requirements"
  install_group optional "$REQ/optional.txt"
fi

# --- 5. this checkout, editable -------------------------------------------------
step "mmmaps (editable install of $ROOT)"
# Run from / so that a checkout in the current directory does not shadow the installed one.
CURRENT=$(cd / && "$PY" -c "import importlib.util as u; s = u.find_spec('mmmaps'); print(s.origin if s else '')" 2>/dev/null || true)
if [[ $CURRENT == "$ROOT/mmmaps/__init__.py" ]]; then
  echo "    already installed from this checkout"
else
  run_logged "${PIP[@]}" install --no-deps --no-build-isolation -e "$ROOT"
fi

trap - ERR
echo "==> done. Environment: $VENV  (activate with: source $VENV/bin/activate)"
