#!/usr/bin/env bash
# The offline wheel set for the GPU machine (one H200; python 3.12, torch 2.11.0+cu130,
# numpy 2; no network): everything tools/gpu_acceptance.sh installs there.
#
#   bash tools/gpu_wheels.sh [--out .gpu-wheels] [--cuda-arch 9.0]
#
# 1. sets up the torch 2.11 / python 3.12 line here (tools/setup_env.sh --torch 2.11): the
#    same torch build as the GPU machine's (PyPI's 2.11.0 is the CUDA 13.0 build);
# 2. cross-builds mmcv with CUDA ops for sm_90 against that torch with this machine's nvcc
#    (CUDA 13; no GPU needed; cached under ~/.cache/mmmaps/wheels like every mmcv build);
# 3. downloads python 3.12 manylinux wheels of requirements/gpu-machine.txt at the versions
#    that line's venv holds (the set its test suite passed with);
# 4. adds the mmcv sdist (fallback: build there) and writes MANIFEST.txt (name, bytes,
#    sha256); fails if the set is larger than MAX_MIB (default 56: the device call carries
#    64 MiB, the checkout included).
# The folder is replaced only when it is a wheel set this script wrote (MANIFEST.txt).
set -Eeuo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$ROOT/.gpu-wheels
CUDA_ARCH=9.0
MAX_MIB=${MAX_MIB:-56}
while (($#)); do
  case $1 in
    --out) OUT=$(realpath -m "$2"); shift 2 ;;
    --cuda-arch) CUDA_ARCH=$2; shift 2 ;;
    -h|--help) sed -n 2,17p "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "gpu_wheels: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
if [[ -e $OUT && ! -f $OUT/MANIFEST.txt ]] && [[ -n $(ls -A "$OUT" 2>/dev/null) ]]; then
  echo "gpu_wheels: $OUT exists and is not a wheel set written by this script" \
       "(no MANIFEST.txt); not replacing it" >&2
  exit 1
fi
CACHE=${MMMAPS_CACHE:-$HOME/.cache/mmmaps}

echo "==> torch 2.11 / python 3.12 line"
bash "$ROOT/tools/setup_env.sh" --torch 2.11 --python 3.12
VENV=$(bash "$ROOT/tools/setup_env.sh" --torch 2.11 --python 3.12 --print-venv)
PY=$VENV/bin/python

echo "==> mmcv with CUDA ops for sm_${CUDA_ARCH/./}"
command -v nvcc >/dev/null || { echo "gpu_wheels: nvcc not found (CUDA 13 toolkit needed)" >&2; exit 1; }
MMCV_VERSION=$(sed -n 's/^mmcv==\([0-9.]*\).*/\1/p' "$ROOT/requirements/mminstall.txt")
KEY=$("$PY" -c "import torch, sys; print(f'torch{torch.__version__}-cu{torch.version.cuda}-py{sys.version_info.major}{sys.version_info.minor}')")
MMCV_DIR=$CACHE/wheels/mmcv-$MMCV_VERSION-$KEY-ops-cuda-sm${CUDA_ARCH/./}
if ls "$MMCV_DIR"/mmcv-*.whl >/dev/null 2>&1; then
  echo "    using cached wheel in $MMCV_DIR"
else
  start=$SECONDS
  bash "$ROOT/tools/build_mmcv.sh" --python "$PY" --out "$MMCV_DIR" --cuda-arch "$CUDA_ARCH"
  echo "    built in $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s"
fi

echo "==> python 3.12 wheels of requirements/gpu-machine.txt"
STAGE=$(mktemp -d "$(dirname "$OUT")/.gpu-wheels.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
mapfile -t PINS < <("$PY" - "$ROOT/requirements/gpu-machine.txt" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
for line in open(sys.argv[1]):
    name = line.split('#')[0].strip()
    if name:
        try:
            print(f'{name}=={version(name)}')
        except PackageNotFoundError:
            sys.exit(f'gpu_wheels: {name} is not installed in {sys.prefix}; '
                     'the torch 2.11 line must hold every package of gpu-machine.txt')
EOF
)
PLATFORMS=()
for n in 17 24 27 28 31 34 35; do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
"$PY" -m pip --disable-pip-version-check download --quiet --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp "${PLATFORMS[@]}" -d "$STAGE" "${PINS[@]}"
cp "$MMCV_DIR"/mmcv-*.whl "$STAGE/"
"$PY" -m pip --disable-pip-version-check download --quiet --no-deps --no-binary :all: \
  --no-build-isolation "mmcv==$MMCV_VERSION" -d "$STAGE"

# the manifest lists every file but itself (the redirection creates it before the glob runs)
(cd "$STAGE" && for f in *; do
   [[ $f == MANIFEST.txt ]] && continue
   printf '%s %s %s\n' "$f" "$(stat -c %s "$f")" "$(sha256sum "$f" | cut -d' ' -f1)"
 done) >"$STAGE/MANIFEST.txt"
TOTAL=$(du -cb "$STAGE" | tail -1 | cut -f1)
echo "    $(($(wc -l <"$STAGE/MANIFEST.txt"))) files, $((TOTAL / 1048576)) MiB"
if ((TOTAL > MAX_MIB * 1048576)); then
  sort -k2 -n -r "$STAGE/MANIFEST.txt" | head -5 >&2
  echo "gpu_wheels: the set is $((TOTAL / 1048576)) MiB, more than MAX_MIB=$MAX_MIB" >&2
  exit 1
fi
rm -rf "$OUT"
mv "$STAGE" "$OUT"
trap - EXIT
echo "==> $OUT ready: name it in the device call's carry and run" \
     "'bash tools/gpu_acceptance.sh --wheels ${OUT#"$ROOT"/}'"
