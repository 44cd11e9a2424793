"""Query-engine benchmark: index build time vs a random OPT-125m forward pass
on the same number of tokens, the index's peak RSS, and warm and cold latency of every saved
query (targets: each <= 1 s warm; index <= 0.5 x forward; index memory flat in tokens).

    .venv/bin/python benchmarks/bench_queries.py --tokens 1000000 --store /tmp/b6/s1m
    .venv/bin/python benchmarks/bench_queries.py --tokens 100000 --store /tmp/b6/s100k   # 1x of the 10x above

The index is built by `actdb index STORE` in a subprocess (peak RSS = its VmHWM sampled
from /proc, CPU = its user + system time). The forward pass is timed in this process on
16,384 tokens and scaled (wall and CPU). Warm: best of --repeat in one process after one
untimed run. Cold: a new Python process per query (imports not counted), timed from
actdb.open to the first answer; the OS page cache is as it is (not dropped: no root), so
cold means a new process and a new DuckDB connection, not a cold disk.

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
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ACTDB, PY, dir_bytes, run_peak, stamp, table  # noqa: E402

V = 50272
L = 12
D = 3072
T = 512


@dataclass(frozen=True)
class Shape:
    """A model's shape for the synthetic stores: layers x d_ffn neurons, sequence length, vocabulary."""
    layers: int
    d_ffn: int
    seq_len: int
    vocab: int
    name: str


OPT125M = Shape(L, D, T, V, "synthetic-opt-125m")
SMOLLM2 = Shape(30, 1536, 256, 49152, "synthetic-smollm2-135m")   # the demo's SmolLM2 store (seq_len 256)


def token_ids(n_tokens: int, seed: int = 0, shape: Shape = OPT125M) -> tuple[np.ndarray, list[int], np.ndarray,
                                                                            np.ndarray]:
    """Zipf token ids in packed sequences of T, BOS (id 2) first: (ids, lengths, positions, the
    permutation from Zipf rank to id, which the detectors' token sets are drawn from)."""
    V, T = shape.vocab, shape.seq_len
    rng = np.random.default_rng(seed)
    ranks = rng.zipf(1.2, size=n_tokens * 2)
    ranks = ranks[ranks < V - 10][:n_tokens]
    perm = rng.permutation(V - 10) + 10
    ids = perm[ranks - 1].astype(np.int64)
    lens = [T] * (n_tokens // T) + ([n_tokens % T] if n_tokens % T else [])
    starts = np.r_[0, np.cumsum(lens)[:-1]]
    pos = np.arange(n_tokens) - np.repeat(starts, lens)
    ids[pos == 0] = 2  # BOS
    return ids, lens, pos, perm


def layer_spec(layer: int, perm: np.ndarray, seed: int = 0, shape: Shape = OPT125M) -> tuple:
    """One layer's neurons: (rate, kind, detector token sets, positional ranges)."""
    L, D, T = shape.layers, shape.d_ffn, shape.seq_len
    early = layer < L // 2
    r = np.random.default_rng(seed + 100 + layer)
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
    return rate, kind, det, ranges


def layer_mask(spec: tuple, ids: np.ndarray, pos: np.ndarray, layer: int, a: int, b: int, seed: int = 0) -> np.ndarray:
    """bool [D, b - a]: the layer's fire mask on token rows a..b."""
    rate, kind, det, ranges = spec
    D = len(rate)
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


def make_store(path: Path, n_tokens: int, seed: int = 0, codec: str = "bitrows", shape: Shape = OPT125M) -> None:
    from actdb.store.synthetic import write_store

    ids, lens, pos, perm = token_ids(n_tokens, seed, shape)
    specs = {l: layer_spec(l, perm, seed, shape) for l in range(shape.layers)}
    write_store(path, ids, lens, lambda l, a, b: layer_mask(specs[l], ids, pos, l, a, b, seed),
                layers=tuple(range(shape.layers)), n_layers=shape.layers, d_ffn=shape.d_ffn, seq_len=shape.seq_len,
                vocab=[f"tok{i}" for i in range(shape.vocab)], prefix_tokens=(2,), block_tokens=65536,
                neuron_chunk=512, model=shape.name, codec=codec)


def forward_time(n_tokens: int, measure_tokens: int = 16384, batch: int = 8) -> tuple[float, float, float]:
    """(wall s, CPU s, tokens/s) of a bare forward pass of a random OPT-125m over `measure_tokens`,
    scaled to n_tokens."""
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    model = OPTForCausalLM(OPTConfig()).eval()   # OPTConfig() defaults are OPT-125m's shape
    x = torch.randint(3, V, (batch, T))
    with torch.inference_mode():
        model(x)  # warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        done = 0
        while done < measure_tokens:
            model(x)
            done += batch * T
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
    return dt / done * n_tokens, dc / done * n_tokens, done / dt


COLD = """import sys, time, json
import actdb
t = time.perf_counter(); st = actdb.open(sys.argv[1]); st.query(sys.argv[2]); t1 = time.perf_counter()
print(json.dumps(t1 - t))"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--store", default="/tmp/b6/s1m")
    ap.add_argument("--reuse", action="store_true", help="keep an existing store (rebuild the index only)")
    ap.add_argument("--skip-forward", action="store_true")
    ap.add_argument("--forward-tokens", type=int, default=16384, help="tokens the forward pass is timed on")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--make-only", action="store_true", help="write the store and stop (no index, no queries)")
    ap.add_argument("--codec", default="bitrows", choices=("bitrows", "zstd"), help="mask codec of the store")
    args = ap.parse_args()
    import actdb
    from actdb.query.catalogue import saved_queries

    store = Path(args.store)
    print(stamp())
    res: dict = {"tokens": args.tokens, "shape": f"{L}x{D}, seq_len {T}"}
    if not (args.reuse and (store / "manifest.json").exists()):
        shutil.rmtree(store, ignore_errors=True)
        t0 = time.perf_counter()
        make_store(store, args.tokens, codec=args.codec)
        res["make_store_s"] = round(time.perf_counter() - t0, 1)
    if args.make_only:
        return print(json.dumps(res, indent=1))
    shutil.rmtree(store / "index", ignore_errors=True)
    r = run_peak([ACTDB, "index", str(store), "--no-progress"])
    res["index_s"], res["index_cpu_s"] = round(r["wall"], 1), round(r["cpu"], 1)
    res["index_peak_rss_gib"] = round(r["maxrss"] / 2**30, 2)
    res["index_bytes"] = dir_bytes(store / "index")
    res["mask_bytes"] = dir_bytes(store / "masks")
    print(json.dumps(res), flush=True)
    st = actdb.open(store)
    rows = []
    for sq in saved_queries():
        try:
            st.query(sq.name)  # warm
        except Exception as e:  # e.g. a query that needs projection weights, which a synthetic store lacks
            rows.append([sq.name, "n/a", "n/a", f"n/a: {str(e)[:70]}"])
            continue
        ts = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            st.query(sq.name)
            ts.append(time.perf_counter() - t0)
        cold = json.loads(subprocess.run([PY, "-c", COLD, str(store), sq.name], capture_output=True, text=True,
                                         check=True).stdout.strip().splitlines()[-1])
        rows.append([sq.name, f"{min(ts):.3f}", f"{cold:.3f}", "yes" if max(min(ts), cold) <= 1 else
                     ("warm only" if min(ts) <= 1 else "**no**")])
    if not args.skip_forward:
        fwd, fwd_cpu, tps = forward_time(args.tokens, args.forward_tokens)
        res["forward_s_est"], res["forward_cpu_s_est"] = round(fwd, 1), round(fwd_cpu, 1)
        res["forward_tok_per_s"] = round(tps)
        res["index_over_forward"] = round(res["index_s"] / fwd, 3)
        res["index_over_forward_cpu"] = round(res["index_cpu_s"] / fwd_cpu, 3)
    res["cpu"] = os.cpu_count()
    print(json.dumps(res, indent=1))
    print(table(["query", "warm s (best of %d)" % args.repeat, "cold s (new process)", "<= 1 s"], rows))


if __name__ == "__main__":
    main()
