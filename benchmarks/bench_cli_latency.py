"""Whole-process latency of a one-line query: `actdb sql STORE "SELECT count(*)
FROM neurons"`, from exec to exit, best and median of --repeat runs, with the user+system CPU
time of the child (less sensitive to a busy host than wall time) and the modules it loaded.

    python benchmarks/bench_cli_latency.py STORE [STORE ...] [--repeat 10] [--actdb CMD]

The command runs as `python -m actdb.cli` from the interpreter given (default: this one),
with PYTHONPATH pointing at this checkout (or --root), from a temporary folder. Bytecode caching
is on (PYTHONDONTWRITEBYTECODE is dropped, as on a user's machine, where pip also compiles an
installed wheel): without it every run compiles actdb's sources again, ~50 ms.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SQL = "SELECT count(*) FROM neurons"
PROBE = ("import sys, runpy\nsys.argv = ['actdb', 'sql', sys.argv[1], sys.argv[2]]\n"
         "try:\n    runpy.run_module('actdb.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
         "heavy = ('torch', 'transformers', 'polars', 'pyarrow', 'numpy', 'zarr', 'tqdm', 'matplotlib')\n"
         "print('LOADED', sorted({m.split('.')[0] for m in sys.modules} & set(heavy)), file=sys.stderr)\n")


def one(py: str, store: str, env: dict, cwd: str) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run([py, "-m", "actdb.cli", "sql", store, SQL], capture_output=True, text=True, env=env, cwd=cwd)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode:
        raise SystemExit(r.stdout + r.stderr)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("stores", nargs="+")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--root", default=str(ROOT), help="the checkout whose actdb runs (e.g. an older commit)")
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = args.root
    print(json.dumps({"load_avg": os.getloadavg(), "cpus": os.cpu_count(), "python": args.python}))
    with tempfile.TemporaryDirectory() as cwd:
        for store in args.stores:
            store = str(Path(store).resolve())
            one(args.python, store, env, cwd)  # warm the page cache
            runs = [one(args.python, store, env, cwd) for _ in range(args.repeat)]
            walls, cpus = [w for w, _ in runs], [c for _, c in runs]
            probe = subprocess.run([args.python, "-c", PROBE, store, SQL], capture_output=True, text=True,
                                   env=env, cwd=cwd)
            loaded = [l for l in probe.stderr.splitlines() if l.startswith("LOADED")]
            print(json.dumps({"store": store, "wall_best_s": round(min(walls), 3),
                              "wall_median_s": round(statistics.median(walls), 3),
                              "cpu_median_s": round(statistics.median(cpus), 3),
                              "heavy_modules": loaded[-1][7:] if loaded else probe.stderr[-300:]}))


if __name__ == "__main__":
    main()
