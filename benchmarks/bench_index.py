"""Index build benchmark: time and peak RSS of `build_index` on a synthetic store, or index ÷
forward on a real model's store (--model), both timed in this one run.

    .venv/bin/python benchmarks/bench_index.py --kind dense --tokens 20000 --store /tmp/bench/dense20k
    .venv/bin/python benchmarks/bench_index.py --kind opt --tokens 131072 --store /tmp/bench/s131k
    .venv/bin/python benchmarks/bench_index.py --model .cache/models/SmolLM2-135M-Instruct \
        --corpus demo-out/corpus.jsonl --tokens 16384 --seq-len 512 --store /tmp/bench/smol16k

--model: `actdb ingest --no-index` of the first --tokens tokens of --corpus (packed, --seq-len,
--batch-size), its forward loop timed by the ingest (fwd_seconds); then the index. `--reuse`
keeps the store and its forward time (forward.json) and times the index again.

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
    ap.add_argument("--device", default=IndexSettings().device)
    ap.add_argument("--model", help="a model folder: ingest it over --corpus and time its forward")
    ap.add_argument("--corpus")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    from actdb.index.build import build_index

    store = Path(args.store)
    forward = None
    if not (args.reuse and (store / "manifest.json").exists()):
        shutil.rmtree(store, ignore_errors=True)
        if args.model:
            forward = ingest_forward(args, store)
        elif args.kind == "dense":
            make_dense(store, args.tokens)
        else:
            from bench_queries import make_store

            make_store(store, args.tokens)
    if args.model and forward is None:
        forward = json.loads((store.parent / f"{store.name}.forward.json").read_text())
    shutil.rmtree(store / "index", ignore_errors=True)
    t0, c0 = time.perf_counter(), time.process_time()
    build_index(store, progress=False, top_k=args.top_k, memory_mb=args.memory_mb, device=args.device)
    index_s = time.perf_counter() - t0
    res = {"kind": Path(args.model).name if args.model else args.kind, "tokens": args.tokens,
           "index_s": round(index_s, 1),
           "index_cpu_s": round(time.process_time() - c0, 1),
           "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
           "index_bytes": sum(f.stat().st_size for f in (store / "index").rglob("*") if f.is_file())}
    if forward:
        res.update(forward)
        res["index_over_forward"] = round(index_s / forward["forward_s"], 3)
        if "ingest_cpu_s" in forward:   # forward.json files of older runs lack it
            res["index_cpu_over_ingest_cpu"] = round(res["index_cpu_s"] / forward["ingest_cpu_s"], 3)
    print(json.dumps(res))


def ingest_forward(args, store: Path) -> dict:
    """Ingest without the index; {forward_s: the ingest's forward loop, wall}, kept beside the store."""
    from actdb.ingest.pipeline import ingest
    from actdb.settings import IngestSettings

    s = IngestSettings(model=args.model, corpus=(args.corpus,), out=str(store), seq_len=args.seq_len,
                       batch_size=args.batch_size, max_tokens=args.tokens, index=False, progress=False,
                       device="cpu")
    t0, c0 = time.perf_counter(), time.process_time()
    summary = ingest(s)
    forward = {"forward_s": round(summary.forward_seconds, 1), "ingest_tokens": summary.n_tokens,
               "ingest_s": round(time.perf_counter() - t0, 1), "ingest_cpu_s": round(time.process_time() - c0, 1)}
    (store.parent / f"{store.name}.forward.json").write_text(json.dumps(forward))
    return forward


if __name__ == "__main__":
    main()
