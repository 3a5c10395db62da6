#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py), bounded to 8 minutes on one GPU; results in benchmarks/results/.
# Usage: bash scripts/gpu_check.sh                      (CUDA)
#        bash scripts/gpu_check.sh --device cpu --smoke  (shows the script works without a GPU)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
PYTHONUNBUFFERED=1 exec timeout 480 "$PY" scripts/gpu_check.py "$@"
