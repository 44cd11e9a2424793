"""Co-firing benchmark: every neuron's top-k neighbours (cofire/, exact) against the
ingest forward time and against a dense float correlation in the universal-neurons manner, in
one run; and one neuron against all, warm.

    .venv/bin/python benchmarks/bench_cofire.py --store demo-out/stores/smollm2 --model smollm2
    .venv/bin/python benchmarks/bench_cofire.py --store /tmp/cf/s1m --model opt125m     # bench_queries.py's store

Each measurement is a subprocess (peak RSS = its VmHWM sampled from /proc, CPU = user + system):
- top-k: cofire.build_neighbours over every recorded layer, each rule of the store (--rules);
- dense: the masks as float32 token blocks, running sums S += X^T X (D x D, float64) and s += X,
  then the correlation matrix (N S - s s^T) / sqrt(...) and each row's top k: what one would do
  with a dense activation cache. On --dense-layers only (the full D x D matrix of every layer does
  not fit this machine: its memory and time are given as the measured figure scaled by D^2), and
  the top-k build on the same layers beside it, for ratios measured side by side;
- forward: a bare base-model forward (no LM head, what ingest runs) of --model on
  --forward-tokens tokens in this process, scaled to the store's tokens (wall and CPU);
- one against all: Store.neighbours on every recorded layer, warm (best of 5), each rule.
Exact: every pair's n_both is counted, so there is no sketch and no recall to measure.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PY, run_peak, stamp, table  # noqa: E402

TOPK = """import sys, json, tempfile
from pathlib import Path
import actdb
from actdb.devices import resolve_workers
from actdb.cofire import build_neighbours
st = actdb.open(sys.argv[1], rule=sys.argv[2])
layers = json.loads(sys.argv[4])
with tempfile.TemporaryDirectory() as d:
    build_neighbours(st, Path(d) / "nn.parquet", int(sys.argv[3]), Path(d), memory_mb=float(sys.argv[5]),
                     workers=resolve_workers(0), layers=layers)
"""


def dense_worker(store: str, rule: str, layers: list[int], k: int) -> None:
    """The dense way: running float sums over token blocks, the N x N correlation, top k per row."""
    import actdb

    st = actdb.open(store, rule=rule)
    n, D = st.n_tokens, st.manifest.d_ffn * len(layers)
    S = np.zeros((D, D), np.float64)
    s = np.zeros(D, np.float64)
    block = 8192
    for s0 in range(0, n, block):
        s1 = min(n, s0 + block)
        x = np.concatenate([st.neuron_masks(l, slice(None), s0, s1) for l in layers]).T.astype(np.float32)
        S += (x.T @ x).astype(np.float64)   # float32 sums of 0/1 over 8192 rows: exact
        s += x.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        var = n * s - s * s
        C = (n * S - np.outer(s, s)) / np.sqrt(np.outer(var, var))
    np.fill_diagonal(C, -np.inf)
    C[np.isnan(C)] = -np.inf
    top = np.argpartition(-C, k, axis=1)[:, :k]
    print(json.dumps({"checksum": int(top.sum())}))


def forward_seconds(model: str, n_tokens: int, measure: int) -> tuple[float, float, float]:
    """(wall s, CPU s, tokens/s) of a bare base-model forward over `measure` tokens, batches of 8 x 256,
    scaled to n_tokens."""
    import torch

    from _common import smollm2

    if model == "smollm2":
        from transformers import AutoModelForCausalLM

        net = AutoModelForCausalLM.from_pretrained(smollm2(), dtype=torch.float32).eval().model
        vocab, seq = 49152, 256
    else:
        from transformers import OPTConfig, OPTForCausalLM

        torch.manual_seed(0)
        net, vocab, seq = OPTForCausalLM(OPTConfig()).eval().model, 50272, 512
    batch = max(1, 2048 // seq)
    x = torch.randint(3, vocab, (batch, seq))
    with torch.inference_mode():
        net(x)
        t0, c0, done = time.perf_counter(), time.process_time(), 0
        while done < measure:
            net(x)
            done += batch * seq
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
    return dt / done * n_tokens, dc / done * n_tokens, done / dt


def one_against_all(store: str, rules: list[str]) -> list[list]:
    import actdb

    rows = []
    st = actdb.open(store)
    layers = st.manifest.layers
    rng = np.random.default_rng(0)
    for rule in rules:
        t0 = time.perf_counter()
        st.neighbours(layers[len(layers) // 2], 0, rule=rule)
        first = time.perf_counter() - t0
        ts = []
        for _ in range(5):
            l, n = int(rng.choice(layers)), int(rng.integers(st.manifest.d_ffn))
            t0 = time.perf_counter()
            st.neighbours(l, n, rule=rule)
            ts.append(time.perf_counter() - t0)
        cache = st.with_rule(rule).__dict__["_cofire_cache"].used
        rows.append([rule, f"{first:.2f}", f"{min(ts):.3f}", f"{np.median(ts):.3f}", f"{cache / 2**20:.0f} MiB"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", required=True)
    ap.add_argument("--model", choices=("smollm2", "opt125m"), required=True, help="whose forward to time")
    ap.add_argument("--rules", default=None, help="comma-separated rules (default: every recorded rule)")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--memory-mb", type=float, default=512.0)
    ap.add_argument("--dense-layers", default="0,1", help="layers the dense baseline runs on (and top-k beside it)")
    ap.add_argument("--forward-tokens", type=int, default=4096)
    ap.add_argument("--skip-full", action="store_true", help="only the side-by-side on --dense-layers")
    ap.add_argument("--skip-dense", action="store_true", help="no dense baseline (its time grows as D^2 x tokens)")
    ap.add_argument("--skip-one", action="store_true", help="no one-against-all timing")
    ap.add_argument("--dense-worker", nargs=3, metavar=("STORE", "RULE", "LAYERS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.dense_worker:
        return dense_worker(args.dense_worker[0], args.dense_worker[1], json.loads(args.dense_worker[2]), args.k)
    import actdb

    print(stamp(), flush=True)
    st = actdb.open(args.store)
    rules = args.rules.split(",") if args.rules else list(st.rules)
    all_layers = list(st.manifest.layers)
    sub = [int(x) for x in args.dense_layers.split(",")]
    res: dict = {"store": args.store, "tokens": st.n_tokens, "neurons": len(all_layers) * st.manifest.d_ffn}
    rows = []
    for rule in rules:
        if not args.skip_full:
            r = run_peak([PY, "-c", TOPK, args.store, rule, str(args.k), json.dumps(all_layers), str(args.memory_mb)])
            res[f"topk_{rule}"] = {"wall_s": round(r["wall"], 1), "cpu_s": round(r["cpu"], 1),
                                   "peak_rss_gib": round(r["maxrss"] / 2**30, 3)}
            print(json.dumps({rule: res[f"topk_{rule}"]}), flush=True)
        if args.skip_dense:
            continue
        small = run_peak([PY, "-c", TOPK, args.store, rule, str(args.k), json.dumps(sub), str(args.memory_mb)])
        dense = run_peak([PY, __file__, "--store", args.store, "--model", args.model, "--k", str(args.k),
                          "--dense-worker", args.store, rule, json.dumps(sub)])
        D = len(sub) * st.manifest.d_ffn
        scale = (res["neurons"] / D) ** 2
        rows.append([rule, D, f"{small['wall']:.1f} / {small['cpu']:.1f}", f"{small['maxrss'] / 2**30:.2f}",
                     f"{dense['wall']:.1f} / {dense['cpu']:.1f}", f"{dense['maxrss'] / 2**30:.2f}",
                     f"{dense['wall'] / small['wall']:.1f}", f"{dense['maxrss'] / small['maxrss']:.1f}",
                     f"{dense['cpu'] * scale:.0f}", f"{(2 * 8 * res['neurons'] ** 2) / 2**30:.1f}"])
        print(rows[-1], flush=True)
    fwd, fwd_cpu, tps = forward_seconds(args.model, st.n_tokens, args.forward_tokens)
    res.update(forward_s_est=round(fwd, 1), forward_cpu_s_est=round(fwd_cpu, 1), forward_tok_per_s=round(tps))
    for rule in rules:
        if f"topk_{rule}" in res:
            t = res[f"topk_{rule}"]
            t["over_forward"] = round(t["wall_s"] / fwd, 3)
            t["cpu_over_forward_cpu"] = round(t["cpu_s"] / fwd_cpu, 3)
    print(json.dumps(res, indent=1))
    print(table(["rule", "neurons (dense layers)", "top-k wall / CPU s", "top-k peak GiB", "dense wall / CPU s",
                 "dense peak GiB", "time ratio", "memory ratio", "dense CPU s, all layers (x D^2)",
                 "dense S + C, all layers GiB"], rows))
    if not args.skip_one:
        print(table(["rule", "first call s (decode)", "warm best s", "warm median s", "cache"],
                    one_against_all(args.store, rules)))


if __name__ == "__main__":
    main()
