#!/usr/bin/env bash
# Install into .venv/ and run the whole test suite. pytest's own exit code is ours:
# 5 (no tests collected) fails like any other error.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh
exec .venv/bin/python -m pytest -q tests "$@"
