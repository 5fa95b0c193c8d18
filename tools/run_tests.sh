#!/usr/bin/env bash
# README command 2: set up (with test requirements) and run the test suite.
#
#   bash tools/run_tests.sh [--torch LINE] [--python X.Y] [pytest args ...]
#
# --torch/--python choose the line of the support matrix (tools/setup_env.sh); everything
# else goes to pytest, e.g. `bash tools/run_tests.sh -m slow`.
set -Eeuo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
LINE_ARGS=()
while (($#)); do
  case $1 in
    --torch|--python) LINE_ARGS+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
    *) break ;;
  esac
done
bash tools/setup_env.sh --tests "${LINE_ARGS[@]}"
# shellcheck disable=SC1091
source "$(bash tools/setup_env.sh "${LINE_ARGS[@]}" --print-venv)/bin/activate"
python -m pytest tests "$@"
