#!/usr/bin/env bash
# The virtual environment in which make_golden.py runs the official Mask2Former
# (facebookresearch/Mask2Former on facebookresearch/detectron2).
#
#   bash tests/reference/m2f_detectron2/setup_venv.sh [VENV]
#
# Neither detectron2 nor Mask2Former is installed: make_golden.py puts their source trees
# (--d2, --m2f) on sys.path and stubs their compiled extensions (detectron2._C and
# Mask2Former's MultiScaleDeformableAttention), which its CPU forward does not use. This
# installs torch (the same release as the default mmmaps line, so both sides run the same CPU
# kernels) and the pure-python dependencies that their imports need. Nothing of this
# environment is used by mmmaps or its test suite.
# VENV defaults to ${MMMAPS_CACHE:-~/.cache/mmmaps}/m2f-detectron2-venv.
set -Eeuo pipefail
VENV=${1:-${MMMAPS_CACHE:-$HOME/.cache/mmmaps}/m2f-detectron2-venv}
PYTHON=${PYTHON:-python3.11}
if [[ ! -x $VENV/bin/python ]]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check install -q)
"${PIP[@]}" 'pip<25' 'setuptools<70' wheel
"${PIP[@]}" torch==2.5.1 torchvision==0.20.1 'numpy<2' scipy 'opencv-python-headless<4.11' \
  Pillow matplotlib pycocotools termcolor yacs tabulate cloudpickle tqdm packaging \
  'fvcore>=0.1.5,<0.1.6' 'iopath>=0.1.7,<0.1.10' 'omegaconf>=2.1,<2.4' 'hydra-core>=1.1' \
  timm==0.6.13
"$VENV/bin/python" -c "import torch, numpy, fvcore, iopath, omegaconf; print('torch', torch.__version__, 'numpy', numpy.__version__)"
echo "$VENV"
