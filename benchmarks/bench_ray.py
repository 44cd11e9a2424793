"""Ray's cost: `actdb ingest --ray` with one worker ÷ the plain ingest of the same
model, tokens and settings, in one run, with Ray's fixed start-up (connecting to the cluster,
starting the worker and loading the model there) reported apart.

    .venv/bin/python benchmarks/bench_ray.py --tokens 32768                 # CPU, OPT-125m shape
    .venv/bin/python benchmarks/bench_ray.py --tokens 32768 --device cuda --gpus-per-worker 1

Per round: a plain ingest, then a Ray ingest of the same store settings (`--no-index`, the default
capture), so each ratio is taken within a pair (the host's speed drifts within a run). The local
cluster is started once by the script (`ray.init(num_cpus=the cores)`), timed apart; the worker
gets every core. Also checks that the two stores' masks are byte-identical.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import WORK, opt125m_random, stamp, table, text_corpus  # noqa: E402


def main() -> None:
    import ray

    import actdb
    from actdb.settings import RaySettings

    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--gpus-per-worker", type=float, default=0.0)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--work", default=str(WORK))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0))
    print(stamp(), f"{cores} cores, device {args.device}")
    mdir, corpus = opt125m_random(), text_corpus()

    def settings(out: Path, tokens: int = args.tokens) -> "actdb.IngestSettings":
        return actdb.IngestSettings(model=str(mdir), corpus=(str(corpus),), out=str(out), seq_len=args.seq_len,
                                    batch_size=args.batch_size, max_tokens=tokens, device=args.device,
                                    progress=False, offload="off", index=False, overwrite=True)

    t0 = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, logging_level="error", log_to_driver=False)
    cluster = time.perf_counter() - t0
    rs = RaySettings(ray="auto", ray_workers=1, gpus_per_worker=args.gpus_per_worker)
    rows, ratios, loops = [], [], []
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        actdb.ingest.run(settings(Path(tmp) / "warm", 4096))   # untimed: page cache, kernel set-up
        for r in range(args.rounds):
            plain = actdb.ingest.run(settings(Path(tmp) / "plain"))
            on_ray = actdb.ingest.run(settings(Path(tmp) / "ray"), rs)
            same = all((Path(tmp) / "plain" / f).read_bytes() == (Path(tmp) / "ray" / f).read_bytes()
                       for f in (p.relative_to(Path(tmp) / "plain") for p in (Path(tmp) / "plain" / "masks").rglob("*")
                                 if p.is_file()))
            work_s = on_ray.seconds - on_ray.startup_seconds
            ratios.append(work_s / plain.seconds)
            loops.append(on_ray.forward_seconds / plain.forward_seconds)
            rows.append([r + 1, f"{plain.n_tokens:,}", f"{plain.seconds:.1f}", f"{plain.forward_seconds:.1f}",
                         f"{on_ray.seconds:.1f}", f"{on_ray.startup_seconds:.1f}", f"{work_s:.1f}",
                         f"{on_ray.forward_seconds:.1f}", f"**{ratios[-1]:.3f}**", f"{loops[-1]:.3f}",
                         "yes" if same else "NO"])
    ray.shutdown()
    print(f"# random OPT-125m shape (12 x 3072), seq_len {args.seq_len}, batch {args.batch_size}, device "
          f"{args.device}; local Ray cluster start (ray.init) {cluster:.1f} s, once, not in the rows")
    print(table(["round", "tokens", "plain s", "plain forward s", "Ray s (end to end)", "Ray start-up s",
                 "Ray s less start-up", "Ray forward s", "Ray less start-up ÷ plain", "forward ÷ forward",
                 "masks byte-identical"], rows))
    print(f"median (Ray less start-up) ÷ plain: {np.median(ratios):.3f}; forward ÷ forward {np.median(loops):.3f}")


if __name__ == "__main__":
    main()
