#!/usr/bin/env bash
# The virtual environment in which make_golden.py runs the authors' Panoptic SegFormer.
#
#   bash tests/reference/psf_official/setup_venv.sh [VENV]
#
# The authors' code (zhiqi-li/Panoptic-SegFormer, commit cdb9b68) is written for mmdet 2.12
# and mmcv-full 1.3.4; both are on PyPI (mmdet as a pure wheel, mmcv-full as an sdist that
# installs without its compiled ops: MMCV_WITH_OPS=0, setuptools<70). Python 3.11 needs
# torch >= 1.13; the same torch as the default mmmaps line is used so that both sides run
# the same kernels. Nothing of this environment is used by mmmaps or its test suite.
# VENV defaults to ${MMMAPS_CACHE:-~/.cache/mmmaps}/psf-official-venv.
set -Eeuo pipefail
VENV=${1:-${MMMAPS_CACHE:-$HOME/.cache/mmmaps}/psf-official-venv}
PYTHON=${PYTHON:-python3.11}
if [[ ! -x $VENV/bin/python ]]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check install -q)
"${PIP[@]}" 'pip<25' 'setuptools<70' wheel
"${PIP[@]}" torch==2.5.1 torchvision==0.20.1 'numpy<2' scipy einops 'opencv-python-headless<4.11' \
  addict pyyaml yapf==0.40.1 pycocotools terminaltables matplotlib six packaging \
  timm==0.6.13
# without ops the sdist names itself "mmcv": fetch the file, then install it
SDIST_DIR=$(mktemp -d)
trap 'rm -rf "$SDIST_DIR"' EXIT
MMCV_WITH_OPS=1 "$VENV/bin/python" -m pip --disable-pip-version-check download -q --no-deps \
  --no-binary :all: --no-build-isolation -d "$SDIST_DIR" mmcv-full==1.3.4
MMCV_WITH_OPS=0 "${PIP[@]}" --no-build-isolation "$SDIST_DIR"/mmcv-full-1.3.4.tar.gz
"${PIP[@]}" --no-deps mmdet==2.12.0
"$VENV/bin/python" -c "import mmcv, mmdet, torch; print('mmcv', mmcv.__version__, 'mmdet', mmdet.__version__, 'torch', torch.__version__)"
echo "$VENV"
