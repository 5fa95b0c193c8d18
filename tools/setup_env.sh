#!/usr/bin/env bash
# Create (or reuse) the mmmaps virtual environment and install the pinned stack.
#
#   bash tools/setup_env.sh [--tests] [--deploy] [--demo] [--optional] [--torch LINE]
#                           [--python X.Y] [--print-venv]
#
#   --torch LINE   the torch line of the support matrix (docs/en/get_started.md, "Support matrix"):
#                    2.5  torch 2.5.1,  numpy 1.x, python 3.11 by default  (the CI default)
#                    2.11 torch 2.11.0, numpy 2.x, python 3.12 by default
#                  Each line has its requirement file requirements/build[-torchLINE].txt and
#                  its own venv; the default line keeps ~/.cache/mmmaps/venv.
#   --python X.Y   interpreter of a new venv (default: the line's; PYTHON=/path overrides)
#   --print-venv   print the venv path of these options and exit (installs nothing)
#   --tests        also the test requirements (requirements/tests.txt; implies --deploy and
#                  --demo) and a headless browser for the web demo's test: Debian's chromium
#                  through apt-get where this runs as root (or with password-less sudo);
#                  elsewhere that one test is skipped and says why
#   --deploy       also onnx + onnxruntime (requirements/deploy.txt: ONNX export/inference)
#   --demo         also Gradio (requirements/demo.txt: demo/web_demo.py)
#   --optional     also requirements/optional.txt
#
# Idempotent: when the venv already holds exactly what the requirement files ask for
# (a stamp records their checksum) and the key imports work, only the editable install
# of this checkout is refreshed, which takes seconds.
#
# One venv serves every checkout; its editable install is the checkout set up last. The
# scripts under tools/, demo/ and benchmarks/ import their own checkout regardless, and
# `import mmmaps` refuses another checkout's package (mmmaps/utils/checkout.py).
#
# Environment variables:
#   MMMAPS_VENV   venv location              (default: ~/.cache/mmmaps/venv for the default
#                                             line, ~/.cache/mmmaps/venv-torchLINE-pyX.Y else)
#   MMMAPS_CACHE  wheel cache and logs       (default: ~/.cache/mmmaps)
#   PYTHON        interpreter for a new venv (default: pythonX.Y of --python)
#   MAX_JOBS      parallel jobs for the mmcv build (default: number of cores)
#
# Print `source "$MMMAPS_VENV/bin/activate"` afterwards to use the environment.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${MMMAPS_CACHE:-$HOME/.cache/mmmaps}
REQ=$ROOT/requirements

WANT_TESTS=0
WANT_OPTIONAL=0
WANT_DEPLOY=0
WANT_DEMO=0
PRINT_VENV=0
TORCH_LINE=2.5
PY_VERSION=""
while (($#)); do
  case $1 in
    --tests) WANT_TESTS=1; shift ;;
    --optional) WANT_OPTIONAL=1; shift ;;
    --deploy) WANT_DEPLOY=1; shift ;;
    --demo) WANT_DEMO=1; shift ;;
    --print-venv) PRINT_VENV=1; shift ;;
    --torch) TORCH_LINE=${2:-}; shift 2 ;;
    --python) PY_VERSION=${2:-}; shift 2 ;;
    -h|--help) sed -n 2,38p "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "setup_env: unknown argument '$1' (expected --tests, --deploy, --demo, --optional, --torch LINE," \
            "--python X.Y or --print-venv)" >&2; exit 2 ;;
  esac
done

# --- the torch line -------------------------------------------------------------
case $TORCH_LINE in
  2.5) BUILD_REQ=$REQ/build.txt; LINE_PYTHON=3.11 ;;
  2.11) BUILD_REQ=$REQ/build-torch2.11.txt; LINE_PYTHON=3.12 ;;
  *) echo "setup_env: unknown torch line '$TORCH_LINE' (expected 2.5 or 2.11)" >&2; exit 2 ;;
esac
PY_VERSION=${PY_VERSION:-$LINE_PYTHON}
PYTHON=${PYTHON:-python$PY_VERSION}
if [[ $TORCH_LINE == 2.5 && $PY_VERSION == 3.11 ]]; then
  VENV=${MMMAPS_VENV:-$CACHE/venv}
else
  VENV=${MMMAPS_VENV:-$CACHE/venv-torch$TORCH_LINE-py$PY_VERSION}
fi
LOGDIR=$CACHE/logs/$(basename "$VENV")  # per venv: two lines can be set up at once
if [[ $PRINT_VENV == 1 ]]; then
  echo "$VENV"
  exit 0
fi
mkdir -p "$CACHE" "$LOGDIR"

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
    echo "setup_env_version=2"
  } | sha256sum | cut -d' ' -f1
}
STAMP_FILE=$VENV/.mmmaps-stamp
STAMP=$(stamp_of "$BUILD_REQ" "$REQ/mminstall.txt" "$REQ/runtime.txt" "$REQ/numpy2-nodeps.txt" \
  "$REQ/numpy2-extra.txt" "$ROOT/tools/build_mmcv.sh")

# faiss with GPU search for the CUDA flavour. PyPI has faiss-gpu-cu12 and no CUDA 13 build;
# it brings its own CUDA 12 runtime libraries (nvidia-*-cu12 wheels), which a CUDA 13 driver
# also runs. It is kept only if, in one process with torch, a search on the GPU returns what
# the same search on the CPU does; otherwise faiss-cpu, and the message says why.
install_faiss_gpu() {
  local torch_cuda
  torch_cuda=$("$PY" -c "import torch; print(torch.version.cuda)")
  step "faiss-gpu-cu12 (torch built with CUDA $torch_cuda)"
  if run_logged "${PIP[@]}" install "${CONSTRAINTS[@]}" faiss-gpu-cu12 \
     && run_logged "$PY" - <<'EOF'
import torch  # first, as in mmmaps: torch's CUDA runtime and faiss's side by side
import faiss
import numpy as np
assert faiss.get_num_gpus() > 0, 'faiss sees no GPU'
rng = np.random.default_rng(0)
keys = rng.standard_normal((2000, 64)).astype('float32')
queries = keys[:50] + 0.01 * rng.standard_normal((50, 64)).astype('float32')
cpu = faiss.IndexFlatIP(64)
cpu.add(keys)
gpu = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, faiss.IndexFlatIP(64))
gpu.add(keys)
assert (cpu.search(queries, 5)[1] == gpu.search(queries, 5)[1]).all(), \
    'the GPU search differs from the CPU search'
assert float(torch.ones(4, device='cuda').sum()) == 4.0
print('faiss', faiss.__version__, 'on', faiss.get_num_gpus(), 'GPU(s): its GPU search agrees '
      'with the CPU search, next to torch', torch.__version__)
EOF
  then
    sed 's/^/    /' "$LOG"
  else
    echo "    faiss-gpu-cu12 does not work with this torch (CUDA $torch_cuda) here; installing" \
         "faiss-cpu instead: memory retrieval runs on the CPU (the default HNSW index is a" \
         "CPU index anyway). Why (from $LOG):"
    tail -5 "$LOG" | sed 's/^/      /'
    "${PIP[@]}" uninstall -y faiss-gpu-cu12 >/dev/null 2>&1 || true
    run_logged "${PIP[@]}" install "${CONSTRAINTS[@]}" faiss-cpu
  fi
}

# --- 1. virtual environment ---------------------------------------------------
step "virtual environment ($VENV)"
if [[ ! -x $VENV/bin/python ]]; then
  "$PYTHON" -c 'import sys' >/dev/null 2>&1 || {
    echo "setup_env: '$PYTHON' not found; install Python $PY_VERSION or set" \
         "PYTHON=/path/to/python$PY_VERSION" >&2
    exit 1
  }
  run_logged "$PYTHON" -m venv "$VENV"
fi
PY=$VENV/bin/python
PIP=("$PY" -m pip --disable-pip-version-check)
CONSTRAINTS=(-c "$BUILD_REQ" -c "$REQ/mminstall.txt")

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
  step "build requirements ($(basename "$BUILD_REQ"): torch, numpy, setuptools<70)"
  run_logged "${PIP[@]}" install -U "pip<25"
  run_logged "${PIP[@]}" install -r "$BUILD_REQ" -c "$BUILD_REQ"

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
      if [[ $FLAVOUR == cuda ]]; then
        run_logged bash "$ROOT/tools/build_mmcv.sh" --python "$PY" --out "$WHEEL_DIR" \
          --cuda-arch "$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")"
      else
        run_logged bash "$ROOT/tools/build_mmcv.sh" --python "$PY" --out "$WHEEL_DIR"
      fi
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
  NUMPY_MAJOR=$("$PY" -c "import numpy; print(numpy.__version__.split('.')[0])")
  if ((NUMPY_MAJOR >= 2)); then
    NODEPS=$(grep -v -E '^\s*(#|$)' "$REQ/numpy2-nodeps.txt" | sed 's/\s*#.*//')
    RUNTIME=$(echo "$RUNTIME" | grep -v -x -F "$NODEPS")
    run_logged "${PIP[@]}" install "${CONSTRAINTS[@]}" -r "$REQ/numpy2-extra.txt"
    run_logged "${PIP[@]}" install --no-deps $NODEPS
  fi
  if [[ $FLAVOUR == cuda ]]; then
    RUNTIME=$(echo "$RUNTIME" | grep -v '^faiss-cpu')
    run_logged "${PIP[@]}" install "${CONSTRAINTS[@]}" $RUNTIME
    install_faiss_gpu
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
# Debian's chromium for tests/test_tools/test_web_demo.py (driven by playwright). Not
# having one is not an error: that test is then skipped and names this step.
install_browser() {
  local browser sudo=()
  browser=$(command -v chromium || command -v chromium-browser || true)
  if [[ -n $browser ]]; then
    echo "    $browser is there"
    return 0
  fi
  if [[ $(id -u) != 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
      sudo=(sudo -n)
    else
      echo "    no chromium, and installing one needs root: the web demo's browser test will" \
           "be skipped (as root: apt-get install chromium)"
      return 0
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "    no chromium and no apt-get: the web demo's browser test will be skipped"
    return 0
  fi
  if run_logged "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y \
       --no-install-recommends chromium fonts-dejavu-core \
     || { run_logged "${sudo[@]}" apt-get update \
          && run_logged "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y \
               --no-install-recommends chromium fonts-dejavu-core; }; then
    echo "    installed $(command -v chromium)"
  else
    echo "    apt-get could not install chromium (log: $LOG): the web demo's browser test" \
         "will be skipped"
  fi
}
if [[ $WANT_TESTS == 1 ]]; then
  step "test requirements"
  install_group tests "$REQ/tests.txt"
  WANT_DEPLOY=1  # the suite tests the ONNX export and runtime
  WANT_DEMO=1    # and the web demo
  step "headless browser for the web demo's test (chromium)"
  install_browser
fi
if [[ $WANT_DEPLOY == 1 ]]; then
  step "deployment requirements (onnx, onnxruntime)"
  install_group deploy "$REQ/deploy.txt"
fi
if [[ $WANT_DEMO == 1 ]]; then
  step "web demo requirements (gradio)"
  install_group demo "$REQ/demo.txt"
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
  # The venv is shared: say whose install this replaces (scripts under tools/, demo/ and
  # benchmarks/ import their own checkout whatever is installed; mmmaps/utils/checkout.py).
  PREVIOUS=$(cd / && "$PY" -c "import json, importlib.metadata as m, urllib.parse as u
d = json.loads(m.distribution('mmmaps').read_text('direct_url.json') or '{}')
print(u.unquote(u.urlparse(d.get('url', '')).path))" 2>/dev/null || true)
  if [[ -n $PREVIOUS && $PREVIOUS != "$ROOT" ]]; then
    echo "    the environment's mmmaps was the editable install of $PREVIOUS$([[ -d $PREVIOUS ]] || echo ' (no longer exists)'); now $ROOT"
  fi
  run_logged "${PIP[@]}" install --no-deps --no-build-isolation -e "$ROOT"
fi

trap - ERR
echo "==> done. Environment: $VENV  (activate with: source $VENV/bin/activate)"
