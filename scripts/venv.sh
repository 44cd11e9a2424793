#!/usr/bin/env bash
# Create .venv/ in the repo root and install actdb with everything it needs.
# torch is pinned (2.13.0): an unpinned torch pulls gigabytes of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
log=$(mktemp)
step() {  # run quietly; show the log only if the step fails
  if ! "$@" >"$log" 2>&1; then cat "$log"; echo "setup failed: $*" >&2; exit 1; fi
}
[ -x .venv/bin/python ] || step "$PY" -m venv .venv
step .venv/bin/python -m pip install --upgrade pip
step .venv/bin/python -m pip install "torch==2.13.0"
step .venv/bin/python -m pip install -e ".[test,demo]"
step .venv/bin/python -c "import actdb, torch, zarr, duckdb, polars, transformers"
rm -f "$log"
