#!/usr/bin/env bash
# Build an mmcv wheel with ops from the pinned sdist against the torch of a given interpreter.
#
#   bash tools/build_mmcv.sh --python VENV/bin/python --out DIR [--cuda-arch 9.0]
#                            [--sdist mmcv-2.1.0.tar.gz]   (offline: a local copy of the sdist)
#
# CPU ops by default; with --cuda-arch the CUDA ops are compiled for that compute capability
# (FORCE_CUDA=1, TORCH_CUDA_ARCH_LIST), which needs an nvcc of the same CUDA major as the
# torch build but no GPU, so a wheel for the GPU machine can be cross-built here.
#
# Reproducible: the sdist is fetched from the package index and checked against a pinned
# sha256, and changed only by scripted rewrites of a fresh copy (each fails loudly if mmcv's
# source no longer has what it rewrites):
#  - the C++ standard: mmcv 2.1.0's setup.py asks for -std=c++17, the headers of
#    torch >= 2.11 need C++20;
#  - CUDA builds: multi-scale deformable attention dispatched for bfloat16 too (bf16 AMP).
# The finished wheel directory is renamed into place, so DIR never holds a partial build.
#
# Environment: MAX_JOBS (parallel compile jobs, default: number of cores), CUDA_HOME.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MMCV_VERSION=$(sed -n 's/^mmcv==\([0-9.]*\).*/\1/p' "$ROOT/requirements/mminstall.txt")
# sha256 of mmcv-2.1.0.tar.gz on PyPI
declare -A SDIST_SHA256=([2.1.0]=d387bcab66b467479b6660310e23746cfc79c6e57acf04094680adb499a5cd3f)

PY="" OUT="" CUDA_ARCH="" SDIST=""
while (($#)); do
  case $1 in
    --python) PY=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --cuda-arch) CUDA_ARCH=$2; shift 2 ;;
    --sdist) SDIST=$(realpath "$2"); shift 2 ;;
    -h|--help) sed -n 2,21p "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "build_mmcv: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
[[ -n $PY && -n $OUT ]] || { echo "build_mmcv: --python and --out are required" >&2; exit 2; }
[[ -n ${SDIST_SHA256[$MMCV_VERSION]:-} ]] || {
  echo "build_mmcv: no pinned sdist checksum for mmcv $MMCV_VERSION (requirements/mminstall.txt);" \
       "add it to SDIST_SHA256 in ${BASH_SOURCE[0]}" >&2; exit 2; }

CXX_STD=$("$PY" - <<'EOF'
import torch
major, minor = (int(v) for v in torch.__version__.split('+')[0].split('.')[:2])
print('c++20' if (major, minor) >= (2, 11) else 'c++17')
EOF
)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/mmcv-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
PIP=("$PY" -m pip --disable-pip-version-check)

if [[ -z $SDIST ]]; then
  echo "build_mmcv: mmcv $MMCV_VERSION sdist"
  # --no-build-isolation: preparing mmcv's metadata imports the torch it will be built against
  "${PIP[@]}" download --quiet --no-deps --no-binary :all: --no-build-isolation \
    "mmcv==$MMCV_VERSION" -d "$WORK"
  SDIST=$WORK/mmcv-$MMCV_VERSION.tar.gz
fi
echo "${SDIST_SHA256[$MMCV_VERSION]}  $SDIST" | sha256sum --check --quiet || {
  echo "build_mmcv: $SDIST does not have the pinned sha256 ${SDIST_SHA256[$MMCV_VERSION]}" >&2
  exit 1; }
tar xzf "$SDIST" -C "$WORK"
SRC=$WORK/mmcv-$MMCV_VERSION

"$PY" - "$SRC" "$CXX_STD" "${CUDA_ARCH:+cuda}" <<'EOF'
import os.path as osp
import sys

src, std, cuda = sys.argv[1], sys.argv[2], sys.argv[3:] == ['cuda']


def rewrite(rel, old, new, at_least, why):
    path = osp.join(src, rel)
    text = open(path).read()
    count = text.count(old)
    if count < at_least:
        sys.exit(f'build_mmcv: expected at least {at_least} x {old!r} in {rel}, found {count}; '
                 'mmcv changed, update tools/build_mmcv.sh')
    open(path, 'w').write(text.replace(old, new))
    print(f'build_mmcv: {rel}: {why} ({count} places)')


if std != 'c++17':
    # the C++ and nvcc flags of the ops (and the unused MPS branch)
    rewrite('setup.py', "'-std=c++17'", f"'-std={std}'", 2, f'compile with -std={std}')
if cuda:
    # bf16 autocast: the multi-scale deformable attention kernels are templated on the
    # element type but dispatched for float/double/half only (atomicAdd on BFloat16 comes
    # from ATen/cuda/Atomic.cuh); tools/gpu_acceptance.py checks the bf16 results
    rewrite('mmcv/ops/csrc/pytorch/cuda/ms_deform_attn_cuda.cu',
            'AT_DISPATCH_FLOATING_TYPES_AND_HALF(',
            'AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, ',
            2, 'multi-scale deformable attention also for bfloat16')
EOF

export MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
if [[ -n $CUDA_ARCH ]]; then
  export FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=$CUDA_ARCH
  if [[ -z ${CUDA_HOME:-} ]]; then
    # nvcc on the PATH may be a wrapper script; the toolkit root is the one with the headers
    for candidate in /usr/local/cuda "$(dirname "$(dirname "$(command -v nvcc)")")"; do
      if [[ -f $candidate/include/cuda_runtime.h && -x $candidate/bin/nvcc ]]; then
        export CUDA_HOME=$candidate
        break
      fi
    done
  fi
  [[ -n ${CUDA_HOME:-} ]] || { echo "build_mmcv: no CUDA toolkit found; set CUDA_HOME" >&2; exit 1; }
  # torch's headers include the CUDA libraries' headers (cusparse.h, cublas_v2.h, ...), which a
  # minimal toolkit lacks and torch's own nvidia-* wheels carry
  NV_INCLUDES=$("$PY" -c "
import glob, os.path as osp, sysconfig
roots = {sysconfig.get_paths()['purelib'], sysconfig.get_paths()['platlib']}
print(':'.join(sorted({p for r in roots for p in glob.glob(osp.join(r, 'nvidia', '*', 'include'))})))")
  export CPATH=$NV_INCLUDES${CPATH:+:$CPATH}
  echo "build_mmcv: CUDA ops for sm_${CUDA_ARCH/./} ($CXX_STD, $MAX_JOBS jobs, CUDA_HOME=$CUDA_HOME)"
else
  export FORCE_CUDA=0
  # an nvcc without a GPU must not switch mmcv to a CUDA build
  export CUDA_VISIBLE_DEVICES=""
  echo "build_mmcv: CPU ops ($CXX_STD, $MAX_JOBS jobs)"
fi
"${PIP[@]}" wheel --no-build-isolation --no-deps --no-cache-dir "$SRC" -w "$WORK/wheel"
# python's own CFLAGS compile the ops with -g: without the debug sections the sm_90 wheel is
# 6 MB instead of 38 MB (what decides whether the GPU machine's wheel set fits in a call)
"$PY" -m wheel unpack "$WORK"/wheel/mmcv-*.whl -d "$WORK/unpacked" >/dev/null
find "$WORK/unpacked" -name '*.so' -exec strip --strip-debug {} +
rm "$WORK"/wheel/mmcv-*.whl
"$PY" -m wheel pack "$WORK"/unpacked/mmcv-* -d "$WORK/wheel" >/dev/null

mkdir -p "$(dirname "$OUT")"
if [[ -e $OUT ]] && find "$OUT" -mindepth 1 ! -name 'mmcv-*.whl' | grep -q .; then
  echo "build_mmcv: $OUT holds files that are not mmcv wheels; not replacing it" >&2
  exit 1
fi
STAGE=$(mktemp -d "$(dirname "$OUT")/.mmcv-wheel.XXXXXX")
mv "$WORK"/wheel/mmcv-*.whl "$STAGE/"
rm -rf "$OUT"
mv "$STAGE" "$OUT"
echo "build_mmcv: $(ls "$OUT"/mmcv-*.whl)"
