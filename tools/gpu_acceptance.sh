#!/usr/bin/env bash
# The GPU acceptance run in one call (docs/en/get_started.md, "The GPU machine"): set-up from the offline wheel
# set, then tools/gpu_acceptance.py (report: gpu_acceptance.json + gpu_acceptance.md).
#
#   bash tools/gpu_acceptance.sh [--wheels .gpu-wheels] [--out DIR] [--dry-run] [-- ARGS]
#
# On the GPU machine (python 3.12, torch 2.11.0+cu130, no network), with the wheel set of
# `bash tools/gpu_wheels.sh` carried along:
#   1. installs its wheels offline (--no-index) into a private folder put on PYTHONPATH,
#      leaving the machine's own packages alone;
#   2. checks that the carried mmcv (cross-built here for sm_90) imports with CUDA ops; if it
#      does not, builds mmcv from the carried sdist there with every core
#      (tools/build_mmcv.sh) and says which path was taken and how long it took;
#   3. runs tools/gpu_acceptance.py.
# --out defaults to $OUT (the device tool's folder that comes back) or
# work_dirs/gpu_acceptance. ARGS after -- go to gpu_acceptance.py (e.g. -- --only environment
# memory_build models: a rerun of some sections within a short device budget). --dry-run:
# no installs, the current environment, CPU, tiny sizes (the test suite runs this so the
# script cannot rot between GPU sessions).
set -Eeuo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WHEELS=$ROOT/.gpu-wheels
REPORT=${OUT:-$ROOT/work_dirs/gpu_acceptance}
DRY=0
EXTRA=()
while (($#)); do
  case $1 in
    --wheels) WHEELS=$(realpath "$2"); shift 2 ;;
    --out) REPORT=$(realpath -m "$2"); shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n 2,19p "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "gpu_acceptance: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
mkdir -p "$REPORT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_acceptance.XXXXXX")
export PYTHONUNBUFFERED=1

if [[ $DRY == 1 ]]; then
  exec "$PY" "$ROOT/tools/gpu_acceptance.py" --dry-run --out "$REPORT" --work "$WORK/work" \
    ${EXTRA[@]+"${EXTRA[@]}"}
fi

[[ -f $WHEELS/MANIFEST.txt ]] || {
  echo "gpu_acceptance: no wheel set at $WHEELS (make it with 'bash tools/gpu_wheels.sh' and" \
       "name it in the device call's carry)" >&2; exit 1; }
start=$SECONDS
(cd "$WHEELS" && while read -r name size sha; do
   echo "$sha  $name"
 done <MANIFEST.txt | sha256sum --check --quiet) || {
  echo "gpu_acceptance: $WHEELS does not match its MANIFEST.txt" >&2; exit 1; }
SITE=$WORK/site
mapfile -t RUNTIME_WHEELS < <(ls "$WHEELS"/*.whl | grep -v '/setuptools-')
"$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$SITE" "${RUNTIME_WHEELS[@]}"
export PYTHONPATH=$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}
echo "==> wheels installed in $((SECONDS - start)) s"

mmcv_cuda_ok() {
  "$PY" - <<'EOF'
import sys
import mmcv._ext  # noqa: F401
from mmcv.ops import get_compiling_cuda_version
sys.exit(get_compiling_cuda_version() in ('not available', ''))
EOF
}
if mmcv_cuda_ok; then
  export MMMAPS_MMCV_INSTALL="carried wheel $(basename "$(ls "$WHEELS"/mmcv-*.whl)")"
else
  echo "==> the carried mmcv does not import with CUDA ops here; building it from the sdist"
  start=$SECONDS
  BUILD_SITE=$WORK/build-site
  "$PY" -m pip install --quiet --no-index --no-deps --target "$BUILD_SITE" "$WHEELS"/setuptools-*.whl
  ARCH=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  PYTHONPATH=$BUILD_SITE:$PYTHONPATH bash "$ROOT/tools/build_mmcv.sh" --python "$PY" \
    --sdist "$(ls "$WHEELS"/mmcv-*.tar.gz)" --out "$WORK/mmcv-built" --cuda-arch "$ARCH" \
    >"$REPORT/mmcv_build.log" 2>&1 || {
    tail -40 "$REPORT/mmcv_build.log" >&2; echo "gpu_acceptance: mmcv build failed" >&2; exit 1; }
  "$PY" -m pip install --quiet --no-index --no-deps --upgrade --target "$SITE" \
    "$WORK"/mmcv-built/mmcv-*.whl
  mmcv_cuda_ok
  export MMMAPS_MMCV_INSTALL="built on this machine from the sdist in $((SECONDS - start)) s"
fi
echo "==> mmcv: $MMMAPS_MMCV_INSTALL"
"$PY" "$ROOT/tools/gpu_acceptance.py" --out "$REPORT" --work "$WORK/work" ${EXTRA[@]+"${EXTRA[@]}"}
