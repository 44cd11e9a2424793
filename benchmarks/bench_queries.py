"""Query-engine benchmark (issue 3): index build time vs a random OPT-125m forward pass on
the same number of tokens, and warm latency of every saved query.

    .venv/bin/python benchmarks/bench_queries.py --tokens 1000000 --store /tmp/bench_opt125m

Synthetic store shaped like OPT-125m: 12 layers x 3072 neurons, seq_len 512 (packed),
Zipf-distributed token ids over OPT's 50272-token vocabulary, block 65536 tokens.
Sparsity modelled on the paper (Fig. 1): in the first half of the network ~5 % dead
neurons, 25 % token-detector-like neurons (fire on 1-20 token ids, ~97 % of the time),
the rest fire independently with a log-normal rate (median 0.4 %, first half; 2 %, second
half); a few positional neurons (position ranges). Not real activations: the n-gram tables
of a diffuse random neuron are a worst case (every fire is a new n-gram).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

V = 50272
L = 12
D = 3072
T = 512


def make_store(path: Path, n_tokens: int, seed: int = 0) -> None:
    from actdb.synthetic import write_store

    rng = np.random.default_rng(seed)
    ranks = rng.zipf(1.2, size=n_tokens * 2)
    ranks = ranks[ranks < V - 10][:n_tokens]
    perm = rng.permutation(V - 10) + 10
    ids = perm[ranks - 1].astype(np.int64)
    lens = [T] * (n_tokens // T) + ([n_tokens % T] if n_tokens % T else [])
    starts = np.r_[0, np.cumsum(lens)[:-1]]
    pos = np.arange(n_tokens) - np.repeat(starts, lens)
    ids[pos == 0] = 2  # BOS
    layer_spec = {}
    for l in range(L):
        early = l < L // 2
        r = np.random.default_rng(seed + 100 + l)
        rate = np.exp(r.normal(np.log(0.004 if early else 0.02), 1.0, D)).clip(0, 0.5)
        kind = np.zeros(D, np.int8)                      # 0 random, 1 dead, 2 token detector, 3 positional
        u = r.random(D)
        if early:
            kind[u < 0.05] = 1
            kind[(u >= 0.05) & (u < 0.30)] = 2
        kind[(u >= 0.30) & (u < 0.303)] = 3
        # detector token sets among frequent-ish tokens
        det = {int(n): perm[r.integers(0, 2000, size=r.integers(1, 21))] for n in np.flatnonzero(kind == 2)}
        ranges = {int(n): (int(a), int(a) + int(w)) for n, a, w in
                  zip(np.flatnonzero(kind == 3), r.integers(0, T, D), r.integers(8, 128, D))}
        layer_spec[l] = (rate, kind, det, ranges)

    def mask_fn(layer: int, a: int, b: int) -> np.ndarray:
        rate, kind, det, ranges = layer_spec[layer]
        r = np.random.default_rng((seed, layer, a))
        n = b - a
        m = r.random((D, n), dtype=np.float32) < rate[:, None].astype(np.float32)
        m[kind == 1] = False
        tk, ps = ids[a:b], pos[a:b]
        for nn, toks in det.items():
            m[nn] = np.isin(tk, toks) & (r.random(n) < 0.97)
        for nn, (lo, hi) in ranges.items():
            m[nn] = (ps >= lo) & (ps < hi)
        return m

    write_store(path, ids, lens, mask_fn, layers=tuple(range(L)), n_layers=L, d_ffn=D, seq_len=T,
                vocab=[f"tok{i}" for i in range(V)], prefix_tokens=(2,), block_tokens=65536, neuron_chunk=512,
                model="synthetic-opt-125m")


def forward_time(n_tokens: int, measure_tokens: int = 16384, batch: int = 8) -> tuple[float, float]:
    """Seconds of a bare forward pass of a random OPT-125m over `measure_tokens`, scaled to n_tokens."""
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    model = OPTForCausalLM(OPTConfig()).eval()   # OPTConfig() defaults are OPT-125m's shape
    x = torch.randint(3, V, (batch, T))
    with torch.inference_mode():
        model(x)  # warm-up
        t0 = time.perf_counter()
        done = 0
        while done < measure_tokens:
            model(x)
            done += batch * T
        dt = time.perf_counter() - t0
    return dt / done * n_tokens, done / dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--store", default="/tmp/bench_opt125m")
    ap.add_argument("--reuse", action="store_true", help="keep an existing store (rebuild the index only)")
    ap.add_argument("--skip-forward", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--make-only", action="store_true", help="write the store and stop (no index, no queries)")
    args = ap.parse_args()
    import actdb
    from actdb.db import saved_queries
    from actdb.index import build_index

    store = Path(args.store)
    res: dict = {"tokens": args.tokens, "shape": f"{L}x{D}, seq_len {T}"}
    if not (args.reuse and (store / "manifest.json").exists()):
        shutil.rmtree(store, ignore_errors=True)
        t0 = time.perf_counter()
        make_store(store, args.tokens)
        res["make_store_s"] = round(time.perf_counter() - t0, 1)
    if args.make_only:
        return print(json.dumps(res, indent=1))
    shutil.rmtree(store / "index", ignore_errors=True)
    t0 = time.perf_counter()
    build_index(store, progress=False)
    res["index_s"] = round(time.perf_counter() - t0, 1)
    import resource

    res["index_peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    res["index_bytes"] = sum(f.stat().st_size for f in (store / "index").glob("*.parquet"))
    st = actdb.open(store)
    q = {}
    for sq in saved_queries():
        st.query(sq.name)  # warm
        ts = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            st.query(sq.name)
            ts.append(time.perf_counter() - t0)
        q[sq.name] = round(min(ts), 3)
    res["query_warm_s"] = q
    if not args.skip_forward:
        fwd, tps = forward_time(args.tokens)
        res["forward_s_est"] = round(fwd, 1)
        res["forward_tok_per_s"] = round(tps)
        res["index_over_forward"] = round(res["index_s"] / fwd, 3)
    res["cpu"] = os.cpu_count()
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
