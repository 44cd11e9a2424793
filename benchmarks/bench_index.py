"""Index build benchmark (index v2): time and peak RSS of `build_index` on a synthetic store.

    .venv/bin/python benchmarks/bench_index.py --kind dense --tokens 20000 --store /tmp/bench/dense20k
    .venv/bin/python benchmarks/bench_index.py --kind opt --tokens 131072 --store /tmp/bench/s131k

dense: shaped like SmolLM2-135M (30 layers x 1536 gated-SiLU neurons, seq_len 512, Zipf ids over
49,152 tokens), every neuron firing independently at a rate drawn from U(0.3, 0.7) (~50 %).
opt: the OPT-125m-shaped sparse store of bench_queries.py. `--reuse` keeps an existing store.
Run under `/usr/bin/time -v` for CPU time as well (the machine's cores are often shared).
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def make_dense(out: Path, n: int, seed: int = 0) -> None:
    from actdb.store.synthetic import write_store

    L, D, T, V = 30, 1536, 512, 49152
    rng = np.random.default_rng(seed)
    ranks = rng.zipf(1.2, size=n * 3)
    ids = ranks[ranks < V][:n].astype(np.int64)
    lens = [T] * (n // T) + ([n % T] if n % T else [])
    rates = {l: np.random.default_rng(l + seed).uniform(0.3, 0.7, D).astype(np.float32) for l in range(L)}

    def mask_fn(l: int, a: int, b: int) -> np.ndarray:
        return np.random.default_rng((l + seed, a)).random((D, b - a), dtype=np.float32) < rates[l][:, None]

    write_store(out, ids, lens, mask_fn, layers=tuple(range(L)), n_layers=L, d_ffn=D, seq_len=T,
                vocab=[f"t{i}" for i in range(V)], block_tokens=32768, neuron_chunk=512,
                domains=["web" if i % 3 else "code" for i in range(len(lens))], model="synthetic-dense")


def main() -> None:
    from actdb.settings import IndexSettings

    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", choices=["dense", "opt"], default="dense")
    ap.add_argument("--tokens", type=int, default=20000)
    ap.add_argument("--store", default="/tmp/bench_index")
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--top-k", type=int, default=IndexSettings().top_k)
    ap.add_argument("--memory-mb", type=float, default=IndexSettings().memory_mb)
    args = ap.parse_args()
    from actdb.index.build import build_index

    store = Path(args.store)
    if not (args.reuse and (store / "manifest.json").exists()):
        shutil.rmtree(store, ignore_errors=True)
        if args.kind == "dense":
            make_dense(store, args.tokens)
        else:
            from bench_queries import make_store

            make_store(store, args.tokens)
    shutil.rmtree(store / "index", ignore_errors=True)
    t0, c0 = time.perf_counter(), time.process_time()
    build_index(store, progress=False, top_k=args.top_k, memory_mb=args.memory_mb)
    res = {"kind": args.kind, "tokens": args.tokens, "index_s": round(time.perf_counter() - t0, 1),
           "index_cpu_s": round(time.process_time() - c0, 1),
           "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
           "index_bytes": sum(f.stat().st_size for f in (store / "index").rglob("*") if f.is_file())}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
