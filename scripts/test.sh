#!/usr/bin/env bash
# Runs the whole test suite from a fresh clone: test tools, the browser, then pytest.
# Usage: bash scripts/test.sh [pytest args]     (after the README's install command made .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
if [ ! -x "$PY" ]; then
  echo "No $PY: run the README's install command first (python3 -m venv .venv && .venv/bin/pip install -r requirements.txt)." >&2
  exit 2
fi
"$PY" -m pip install -q -r requirements-dev.txt
"$PY" -m pip install -q -r requirements-loggers.txt  # optional loggers: their tests read back what they wrote
"$PY" -m pip install -q -r requirements-ray.txt  # optional Ray backend: tests/test_ray.py runs a 2-node cluster
# The browser tests drive Debian's chromium (Playwright's own browser download needs a network).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "chromium is missing: install it (sudo apt-get install -y chromium) for the browser tests." >&2
    exit 2
  fi
fi
exec "$PY" -m pytest "$@"
