#!/usr/bin/env bash
# Runs the test suite (sets up .venv first if needed). Extra arguments go to pytest, e.g. -k masking.
set -euo pipefail
cd "$(dirname "$0")/.."
bash run/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
exec .venv/bin/python -m pytest tests "$@"
