"""Ingest overhead: wall time of `actdb ingest` ÷ a bare forward pass of the same model over
the same tokens and batches, in one run (SPEC §4 target ≤ 1.15).

    .venv/bin/python benchmarks/bench_ingest_overhead.py --model opt125m --tokens 16384
    .venv/bin/python benchmarks/bench_ingest_overhead.py --model smollm2 --tokens 8192

One untimed ingest of one batch runs first (see main).

The bare forward is timed twice: the full model with its LM head (what a user would call a
forward pass), and the base model alone (what ingest actually needs). `actdb ingest` runs
in-process, timed end to end (tokenizing, hashing the weights, loading, writing), with each
--capture setting and without the query index (`--no-index`; the index is timed by
bench_queries.py and bench_out_of_core.py). Corpus: real text (stdlib code + licences,
benchmarks/_common.text_corpus). Also prints the storage ratios of the stores it wrote.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import STORAGE_HEADER, WORK, opt125m_random, smollm2, stamp, storage_row, store_storage, table, text_corpus  # noqa: E402


def bare_forward(model_dir: Path, staging_ids: np.ndarray, offsets: np.ndarray, batch: int, base: bool) -> tuple[float, float]:
    """(wall s, process CPU s) of a forward pass over the sequences staging_ids[offsets[i]:offsets[i+1]]."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    run = model.base_model if base else model
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for lo in range(0, len(offsets) - 1, batch):
            hi = min(lo + batch, len(offsets) - 1)
            ids = torch.from_numpy(np.stack([staging_ids[offsets[i]:offsets[i + 1]] for i in range(lo, hi)]).astype(np.int64))
            run(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    import actdb

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=("opt125m", "smollm2"), default="opt125m")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--captures", default="none,resid,resid+ffn")
    ap.add_argument("--work", default=str(WORK))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(stamp(), f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    mdir = opt125m_random() if args.model == "opt125m" else smollm2()
    corpus = text_corpus()
    captures = args.captures.split(",")
    res: dict[str, float] = {}
    storage = {}
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        stores = {}
        # untimed: the first ingest in a process pays one-time costs (model file into the page cache,
        # kernel set-up) that would otherwise land on whichever capture runs first
        actdb.ingest(actdb.IngestSettings(model=str(mdir), corpus=(str(corpus),), out=str(Path(tmp) / "warmup"),
                                          seq_len=args.seq_len, batch_size=args.batch_size,
                                          max_tokens=args.seq_len * args.batch_size, capture="none",
                                          progress=False, offload="off", index=False))
        for capture in captures:
            out = Path(tmp) / capture
            s = actdb.IngestSettings(model=str(mdir), corpus=(str(corpus),), out=str(out), seq_len=args.seq_len,
                                     batch_size=args.batch_size, max_tokens=args.tokens, capture=capture,
                                     progress=False, offload="off", index=False)
            t0, c0 = time.perf_counter(), time.process_time()
            summary = actdb.ingest(s)
            res[capture] = time.perf_counter() - t0
            res[capture + " cpu"] = time.process_time() - c0
            res[capture + " loop"] = summary.forward_seconds
            stores[capture] = out
        storage = store_storage(stores[captures[0]])
        # the same sequences ingest ran, rebuilt from the store's token table
        store = actdb.open(stores[captures[0]])
        toks = store.tokens().sort("row")
        ids = toks["token_id"].to_numpy()
        seq = toks["seq"].to_numpy()
        offsets = np.concatenate([[0], np.flatnonzero(np.diff(seq)) + 1, [len(seq)]])
        lengths = np.diff(offsets)
        keep = int((lengths == lengths[0]).sum())  # bare forward stacks full-length sequences only
        res["full"], res["full cpu"] = bare_forward(mdir, ids, offsets[:keep + 1], args.batch_size, base=False)
        res["base"], res["base cpu"] = bare_forward(mdir, ids, offsets[:keep + 1], args.batch_size, base=True)
        ntok = int(store.n_tokens)
        nfwd = int(offsets[keep])
    print(f"# {args.model} ({mdir}), {ntok:,} tokens ingested, bare forwards over the {nfwd:,} tokens of its "
          f"full-length sequences; seq_len {args.seq_len}, batch {args.batch_size}")
    # the bare forward may skip a last short sequence: scale it to ingest's token count
    k = ntok / nfwd
    full, base, fullc, basec = res["full"] * k, res["base"] * k, res["full cpu"] * k, res["base cpu"] * k
    rows = [["bare forward, full model (with LM head)", f"{full:.1f}", "1.00", f"{full / base:.2f}",
             f"{fullc:.1f}", "1.00", f"{fullc / basec:.2f}"],
            ["bare forward, base model (what ingest runs)", f"{base:.1f}", f"{base / full:.2f}", "1.00",
             f"{basec:.1f}", f"{basec / fullc:.2f}", "1.00"]]
    for c in captures:
        cc = res[c + " cpu"]
        rows.append([f"`actdb ingest --capture {c} --no-index`, end to end", f"{res[c]:.1f}",
                     f"**{res[c] / full:.2f}**", f"{res[c] / base:.2f}", f"{cc:.1f}", f"**{cc / fullc:.2f}**",
                     f"{cc / basec:.2f}"])
        rows.append(["  its forward loop (hooks, packing, queueing)", f"{res[c + ' loop']:.1f}",
                     f"{res[c + ' loop'] / full:.2f}", f"**{res[c + ' loop'] / base:.3f}**", "", "", ""])
    print(table(["what", "wall s", "÷ bare full", "÷ bare base", "CPU s", "CPU ÷ bare full", "CPU ÷ bare base"], rows))
    print()
    print(table(STORAGE_HEADER, [storage_row(f"{args.model}, capture {captures[0]}", storage)]))


if __name__ == "__main__":
    main()
