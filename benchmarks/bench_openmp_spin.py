"""Does actdb's OpenMP setting (devices.quiet_openmp: GOMP_SPINCOUNT=10000) slow the bare forward that
the ingest overhead is divided by? Alternating processes, torch's default spin then actdb's, each the
median of six bare base-model forwards of one batch (the first of seven dropped).

    .venv/bin/python benchmarks/bench_openmp_spin.py --model smollm2 --pairs 6

The setting is read once, when torch's OpenMP runtime loads, so each measurement is its own process.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import PY, opt125m_random, smollm2, stamp, table  # noqa: E402

CHILD = """
import sys, time, numpy as np, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval().base_model
ids = torch.from_numpy(np.random.default_rng(0).integers(100, 4000, (int(sys.argv[2]), int(sys.argv[3]))))
walls, cpus = [], []
with torch.inference_mode():
    for _ in range(7):
        t, c = time.perf_counter(), time.process_time()
        model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
print(np.median(walls[1:]), np.median(cpus[1:]))
"""


def main() -> None:
    from actdb.devices import OPENMP_SPIN

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=("opt125m", "smollm2"), default="smollm2")
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    args = ap.parse_args()
    mdir = opt125m_random() if args.model == "opt125m" else smollm2()
    base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    print(stamp(), f"{args.model}, batches of {args.batch_size} x {args.seq_len}, {args.pairs} pairs of processes")
    rows, ratios = [], []
    for p in range(args.pairs):
        got = []
        for env in (base, {**base, "GOMP_SPINCOUNT": OPENMP_SPIN}):
            out = subprocess.run([PY, "-c", CHILD, str(mdir), str(args.batch_size), str(args.seq_len)], env=env,
                                 capture_output=True, text=True, check=True).stdout.split()
            got.append(tuple(map(float, out[-2:])))
        ratios.append(got[1][0] / got[0][0])
        rows.append([p + 1, f"{got[0][0]:.3f} / {got[0][1]:.3f}", f"{got[1][0]:.3f} / {got[1][1]:.3f}", f"{ratios[-1]:.3f}"])
    print(table(["pair", "torch's default: wall / CPU s", f"GOMP_SPINCOUNT={OPENMP_SPIN}: wall / CPU s", "wall ratio"], rows))
    print(f"\nmedian wall ratio (actdb's setting ÷ default): {np.median(ratios):.3f}")


if __name__ == "__main__":
    main()
