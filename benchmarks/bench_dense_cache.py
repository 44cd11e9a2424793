"""actdb against a dense activation cache, the alternative a user would pick: every FFN
activation of the same model over the same tokens kept as fp16 and written with
safetensors (what `run_with_cache` gives, kept for a whole corpus), then numpy/torch over
the saved tensors to answer the paper's questions.

    .venv/bin/python benchmarks/bench_dense_cache.py --tokens 49152 --work /tmp/b6/dense

Model: the seeded random OPT-125m shape (12 x 3072 ReLU neurons, benchmarks/_common.py), fp32,
seq_len 256 packed, batch 8, real text (stdlib code + licences). Steps, each a subprocess
whose peak RSS (VmHWM) is sampled from /proc:

  actdb ingest   `actdb ingest --capture none --no-index` (masks only, like the dense cache
                 holds FFN activations only; tokenizing included)
  actdb index    `actdb index STORE` (the prebuilt tables the views read)
  dense ingest   the same token rows read back from the store's token table (tokenizing not
                 included), the same base-model forward with a pre-hook on each fc2 (the ReLU
                 output), copied as fp16 into one preallocated [tokens, 3072] tensor per layer
                 (a best case: no torch.cat copy), then safetensors.save_file
  questions      dead neurons per layer; unigram coverage histogram (95 %, BOS excluded where there is one,
                 the paper's bins); positional neurons (I(act; pos) > 0.05, full-length
                 sequences). Dense: one layer at a time read from the safetensors file, torch
                 on 2 threads. actdb: the saved queries dead_per_layer, unigram_coverage_hist,
                 positional_by_kind, cold (a new process: imports excluded, open + first
                 query) and warm (best of 3 in that process). OS page cache as it is (no
                 root to drop it; a 3.6 GB dense file fits in 24 GiB, so both sides read
                 from page cache when run back to back).
The answers are compared (dense vs actdb) and the match is printed.
--phase ingest runs the two ingests only (no index), --phase query the rest on a kept --work.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import ACTDB, MB, PY, dir_bytes, opt125m_random, run_peak, stamp, table, text_corpus  # noqa: E402

SEQ_LEN, BATCH = 256, 8
BINS = [(1, 5), (6, 10), (11, 20), (21, 50), (51, 200), (201, 1000), (1001, 2000), (2001, 50000)]
QUESTIONS = {"dead": "dead_per_layer", "coverage": "unigram_coverage_hist", "positional": "positional_by_kind"}


# ----------------------------------------------------------------------------- dense side
def dense_ingest(model_dir: str, store: str, out: str) -> dict:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    import actdb

    t0 = time.perf_counter()
    toks = actdb.open(store).tokens().sort("row")
    ids, seq, pos = (toks[c].to_numpy() for c in ("token_id", "seq", "pos"))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    layers = model.model.decoder.layers
    d = layers[0].fc2.in_features
    cache = [torch.empty(len(ids), d, dtype=torch.float16) for _ in layers]
    cursor = [0]

    def hook(i):
        def pre(module, args):
            x = args[0].reshape(-1, d)
            cache[i][cursor[0]:cursor[0] + len(x)] = x
        return pre

    for i, layer in enumerate(layers):
        layer.fc2.register_forward_pre_hook(hook(i))
    offsets = np.r_[0, np.flatnonzero(np.diff(seq)) + 1, len(seq)]
    t1 = time.perf_counter()
    with torch.inference_mode():
        for lo in range(0, len(offsets) - 1, BATCH):
            hi = min(lo + BATCH, len(offsets) - 1)
            lens = np.diff(offsets[lo:hi + 1])
            groups = [(lo, hi)] if (lens == lens[0]).all() else [(j, j + 1) for j in range(lo, hi)]
            for a, b in groups:  # a batch stacks equal-length sequences only
                x = torch.from_numpy(np.stack([ids[offsets[j]:offsets[j + 1]] for j in range(a, b)]).astype(np.int64))
                model.model(input_ids=x, use_cache=False)
                cursor[0] += x.numel()
    t2 = time.perf_counter()
    Path(out).mkdir(parents=True, exist_ok=True)
    save_file({f"layer_{i:02d}": c for i, c in enumerate(cache)}, str(Path(out) / "ffn.safetensors"))
    np.savez(Path(out) / "tokens.npz", ids=ids, seq=seq, pos=pos, prefix=bool(actdb.open(store).manifest.prefix_tokens))
    return dict(forward_s=t2 - t1, total_s=time.perf_counter() - t0, save_s=time.perf_counter() - t2)


def _layers(path: Path):
    from safetensors import safe_open

    with safe_open(str(path / "ffn.safetensors"), framework="pt") as f:
        for k in sorted(f.keys()):
            yield int(k.split("_")[1]), f.get_tensor(k)


def dense_dead(path: Path) -> dict:
    return {l: int((~(x > 0).any(0)).sum()) for l, x in _layers(path)}


def dense_coverage(path: Path, p: float = 0.95) -> dict:
    import torch

    t = np.load(path / "tokens.npz")
    # position 0 is excluded from n-gram statistics when the tokenizer puts a BOS there (docs/definitions.md)
    keep_np = t["pos"] > 0 if bool(t["prefix"]) else np.ones(len(t["pos"]), bool)
    keep = torch.from_numpy(keep_np)
    uniq, inv = np.unique(t["ids"][keep_np], return_inverse=True)
    inv = torch.from_numpy(inv)
    out = {}
    for l, x in _layers(path):
        f = x[keep] > 0
        counts = torch.zeros(len(uniq), x.shape[1], dtype=torch.int32)
        for a in range(0, len(f), 8192):
            counts.index_add_(0, inv[a:a + 8192], f[a:a + 8192].to(torch.int32))
        total = counts.sum(0).double()
        cum = counts.sort(0, descending=True).values.cumsum(0).double()
        n_cov = (cum < p * total).sum(0) + 1
        n_cov = n_cov[total > 0].numpy()
        out[l] = [int(((n_cov >= lo) & (n_cov <= hi)).sum()) for lo, hi in BINS]
    return out


def dense_positional(path: Path, mi_min: float = 0.05) -> dict:
    import torch

    t = np.load(path / "tokens.npz")
    seq = t["seq"]
    _, starts, lens = np.unique(seq, return_index=True, return_counts=True)
    full = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lens) if n == SEQ_LEN])
    full_t = torch.from_numpy(full)
    out = {}
    for l, x in _layers(path):
        f = (x[full_t] > 0).reshape(-1, SEQ_LEN, x.shape[1]).double()
        frp = f.mean(0)                     # [pos, neuron]
        fr = frp.mean(0, keepdim=True)

        def term(a, b):                     # a log(a/b), 0 log 0 = 0
            return torch.where(a > 0, a * torch.log(a / b.clamp_min(1e-300)), torch.zeros_like(a))

        mi = (term(frp, fr) + term(1 - frp, 1 - fr)).mean(0)
        out[l] = int((mi > mi_min).sum())
    return out


DENSE = {"dead": dense_dead, "coverage": dense_coverage, "positional": dense_positional}


def dense_query(path: str, question: str) -> dict:
    import torch

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    ans = DENSE[question](Path(path))
    return dict(seconds=time.perf_counter() - t0, answer=ans)


# ----------------------------------------------------------------------------- actdb side
def actdb_answer(question: str, df) -> dict:
    if question == "dead":
        return {int(r["layer"]): int(r["n_dead"]) for r in df.iter_rows(named=True)}
    if question == "coverage":
        out: dict = {}
        for r in df.sort(["layer", "lo"]).iter_rows(named=True):
            out.setdefault(int(r["layer"]), []).append(int(r["n_neurons"]))
        return out
    out = {}
    for r in df.iter_rows(named=True):
        out[int(r["layer"])] = out.get(int(r["layer"]), 0) + int(r["n_neurons"])
    return out


def actdb_query(store: str, question: str, repeat: int = 3) -> dict:
    t0 = time.perf_counter()
    import actdb

    t1 = time.perf_counter()
    st = actdb.open(store)
    df = st.query(QUESTIONS[question])
    t2 = time.perf_counter()
    warm = []
    for _ in range(repeat):
        t = time.perf_counter()
        st.query(QUESTIONS[question])
        warm.append(time.perf_counter() - t)
    return dict(import_s=t1 - t0, cold_s=t2 - t1, warm_s=min(warm), answer=actdb_answer(question, df))


def sub(*args: str) -> tuple[dict, dict]:
    """Run this script's own step in a new process; returns (its JSON result, its peak memory)."""
    r = run_peak([PY, __file__, "_step", *args])
    return json.loads(r["log"].strip().splitlines()[-1]), r


# ----------------------------------------------------------------------------- driver
def main() -> None:
    if sys.argv[1:2] == ["_step"]:
        step, *a = sys.argv[2:]
        fn = {"dense_ingest": dense_ingest, "dense_query": dense_query, "actdb_query": actdb_query}[step]
        print(json.dumps(fn(*a), default=str))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=49152)
    ap.add_argument("--work", default="/tmp/b6/dense")
    ap.add_argument("--phase", choices=("all", "ingest", "query"), default="all")
    args = ap.parse_args()
    work = Path(args.work)
    store, dense = work / "store", work / "dense"
    res_file = work / "results.json"
    print(stamp())
    res = json.loads(res_file.read_text()) if res_file.exists() and args.phase == "query" else {}
    if args.phase in ("all", "ingest"):
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        model, corpus = opt125m_random(), text_corpus()
        r = run_peak([ACTDB, "ingest", str(model), str(corpus), "-o", str(store), "--seq-len", str(SEQ_LEN),
                      "--batch-size", str(BATCH), "--max-tokens", str(args.tokens), "--capture", "none",
                      "--offload", "off", "--no-index", "--no-progress"])
        res["actdb_ingest"] = dict(wall=r["wall"], rss=r["maxrss"], cmd=r["cmd"])
        out, r = sub("dense_ingest", str(model), str(store), str(dense))
        res["dense_ingest"] = dict(wall=r["wall"], rss=r["maxrss"], **out)
        res["tokens"] = int(np.load(dense / "tokens.npz")["ids"].shape[0])
        res["actdb_bytes"] = dir_bytes(store / "masks")
        res["dense_bytes"] = dir_bytes(dense)
        res_file.write_text(json.dumps(res))
    if args.phase in ("all", "query"):
        shutil.rmtree(store / "index", ignore_errors=True)
        r = run_peak([ACTDB, "index", str(store)])
        res["actdb_index"] = dict(wall=r["wall"], rss=r["maxrss"])
        res["index_bytes"] = dir_bytes(store / "index")
        for q in QUESTIONS:
            out, r = sub("actdb_query", str(store), q)
            res[f"actdb_{q}"] = dict(rss=r["maxrss"], **out)
            out, r = sub("dense_query", str(dense), q)
            res[f"dense_{q}"] = dict(rss=r["maxrss"], **out)
        res_file.write_text(json.dumps(res))
    report(res)


def report(res: dict) -> None:
    gib = 1 << 30
    a, d = res["actdb_ingest"], res["dense_ingest"]
    print(f"# {res['tokens']:,} tokens, random OPT-125m shape, 12 x 3072 neurons")
    print(f"# actdb ingest: {a['cmd']}")
    rows = [["ingest wall s", f"{a['wall']:.1f}", f"{d['wall']:.1f} (forward {d['forward_s']:.1f}, save {d['save_s']:.1f})",
             f"{a['wall'] / d['wall']:.2f}"],
            ["ingest peak RSS GiB", f"{a['rss'] / gib:.2f}", f"{d['rss'] / gib:.2f}", f"{a['rss'] / d['rss']:.2f}"],
            ["bytes on disk MB (masks / ffn.safetensors)", f"{res['actdb_bytes'] / 1e6:.1f}",
             f"{res['dense_bytes'] / 1e6:.1f}", f"1/{res['dense_bytes'] / res['actdb_bytes']:.1f}"]]
    if "actdb_index" in res:
        ix = res["actdb_index"]
        rows += [["index build wall s (actdb only)", f"{ix['wall']:.1f}", "-", ""],
                 ["index build peak RSS GiB", f"{ix['rss'] / gib:.2f}", "-", ""],
                 ["masks + index MB", f"{(res['actdb_bytes'] + res['index_bytes']) / 1e6:.1f}",
                  f"{res['dense_bytes'] / 1e6:.1f}", f"1/{res['dense_bytes'] / (res['actdb_bytes'] + res['index_bytes']):.1f}"],
                 ["ingest + index wall s", f"{a['wall'] + ix['wall']:.1f}", f"{d['wall']:.1f}",
                  f"{(a['wall'] + ix['wall']) / d['wall']:.2f}"]]
        for q, name in QUESTIONS.items():
            qa, qd = res[f"actdb_{q}"], res[f"dense_{q}"]
            same = {str(k): v for k, v in qa["answer"].items()} == {str(k): v for k, v in qd["answer"].items()}
            rows.append([f"{q} (`{name}`) s: actdb cold / warm vs dense", f"{qa['cold_s']:.3f} / {qa['warm_s']:.3f}",
                         f"{qd['seconds']:.2f}", f"{qa['cold_s'] / qd['seconds']:.4f} (cold), answers equal: {same}"])
            rows.append([f"  peak RSS GiB of that process", f"{qa['rss'] / gib:.2f}", f"{qd['rss'] / gib:.2f}", ""])
    print(table(["", "actdb", "dense fp16 cache", "actdb ÷ dense"], rows))
    for q in QUESTIONS:
        if f"actdb_{q}" in res:
            print(f"# {q}: actdb {res[f'actdb_{q}']['answer']}\n#   dense {res[f'dense_{q}']['answer']}")


if __name__ == "__main__":
    main()
