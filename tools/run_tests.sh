#!/usr/bin/env bash
# README command 2: set up (with test requirements) and run the test suite.
# Extra arguments go to pytest, e.g. `bash tools/run_tests.sh -m slow`.
set -Eeuo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash tools/setup_env.sh --tests
# shellcheck disable=SC1091
source "${MMMAPS_VENV:-${MMMAPS_CACHE:-$HOME/.cache/mmmaps}/venv}/bin/activate"
python -m pytest tests "$@"
