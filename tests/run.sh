#!/usr/bin/env bash
# Install into .venv/ and run the whole test suite. pytest's own exit code is ours:
# 5 (no tests collected) fails like any other error.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh
# the explorer's browser tests (tests/test_serve_browser.py) drive Debian's headless Chromium
if ! command -v chromedriver >/dev/null || ! [ -x /usr/bin/chromium ]; then
  log=$(mktemp)
  if ! { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
         chromium chromium-driver; } >"$log" 2>&1; then
    tail -20 "$log"
    # the rest of the suite still runs; the browser tests fail, saying what is missing
    echo "warning: could not install chromium and chromium-driver (apt-get, as root): the browser tests in" \
         "tests/test_serve_browser.py will fail" >&2
  fi
  rm -f "$log"
fi
exec .venv/bin/python -m pytest -q tests "$@"
