"""Ingest overhead: wall time of `actdb ingest` ÷ a bare forward pass of the same model over
the same tokens and batches, in one run (target ≤ 1.05).

    .venv/bin/python benchmarks/bench_ingest_overhead.py --model opt125m --tokens 16384
    .venv/bin/python benchmarks/bench_ingest_overhead.py --model smollm2 --tokens 98304 --captures resid --repeats 3

Below 2 blocks (--block-tokens, 32,768 tokens by default) the one block is compressed and written after
the loop, so the writer never competes with the forward as it does in a long ingest: use three blocks or
more for a figure that stands for one.

An untimed ingest runs first (warm-up, and the token rows for the bare forwards); then, per round
and capture, a bare base-model forward and right after it the ingest: the host's speed drifts
within a run, so each ratio is taken within a pair, and the medians over rounds are printed.

The bare forward is timed twice: the full model with its LM head (what a user would call a
forward pass), and the base model alone (what ingest actually needs). `actdb ingest` runs
in-process, timed end to end (tokenizing, hashing the weights, loading, writing), with each
--capture setting and without the query index (`--no-index`; the index is timed by
bench_queries.py and bench_out_of_core.py). actdb is imported before torch, as `actdb ingest`
imports it, so the bare forwards and the ingests run under the same OpenMP setting
(devices.quiet_openmp; GOMP_SPINCOUNT set in the environment wins), and the bare forwards under the
malloc thresholds the ingest's loop fixes (devices.steady_malloc). Corpus: real text (stdlib code + licences,
benchmarks/_common.text_corpus). Also prints the storage ratios of the stores it wrote.
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
sys.path.insert(0, str(ROOT))
import actdb  # noqa: E402  (before torch, as the CLI: both forwards run under its OpenMP setting, devices.quiet_openmp)
import torch  # noqa: E402
from _common import STORAGE_HEADER, WORK, opt125m_random, smollm2, stamp, storage_row, store_storage, table, text_corpus  # noqa: E402


def bare_forward(model_dir: Path, staging_ids: np.ndarray, offsets: np.ndarray, batch: int, base: bool) -> tuple[float, float]:
    """(wall s, process CPU s) of a forward pass over the sequences staging_ids[offsets[i]:offsets[i+1]],
    under the malloc thresholds the ingest's forward loop sets (devices.steady_malloc): without them
    some processes' forwards ran 10-20 % slower, all in page faults, and the ratio would flatter ingest."""
    from transformers import AutoModelForCausalLM

    from actdb.devices import steady_malloc

    steady_malloc()

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    run = model.base_model if base else model
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for lo in range(0, len(offsets) - 1, batch):
            hi = min(lo + batch, len(offsets) - 1)
            ids = torch.from_numpy(np.stack([staging_ids[offsets[i]:offsets[i + 1]] for i in range(lo, hi)]).astype(np.int64))
            run(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    return time.perf_counter() - t0, time.process_time() - c0


def bare_rows(store) -> tuple[np.ndarray, np.ndarray, float]:
    """A store's token ids in row order, the offsets of its full-length sequences (the bare forward
    stacks those only) and the factor from their tokens to the store's (a last short sequence)."""
    toks = store.tokens().sort("row")
    seq = toks["seq"].to_numpy()
    offsets = np.concatenate([[0], np.flatnonzero(np.diff(seq)) + 1, [len(seq)]])
    keep = int((np.diff(offsets) == offsets[1]).sum())
    return toks["token_id"].to_numpy(), offsets[:keep + 1], len(seq) / offsets[keep]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=("opt125m", "smollm2"), default="opt125m")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--captures", default="none,resid,resid+ffn")
    ap.add_argument("--codecs", default="bitrows", help="mask codecs, each paired with every capture (bitrows,zstd)")
    ap.add_argument("--repeats", type=int, default=2, help="rounds of (bare forward, ingest) pairs per capture")
    ap.add_argument("--work", default=str(WORK))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(stamp(), f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"GOMP_SPINCOUNT {os.environ.get('GOMP_SPINCOUNT', 'unset')}")
    mdir = opt125m_random() if args.model == "opt125m" else smollm2()
    corpus = text_corpus()
    variants = [(c, codec) for codec in args.codecs.split(",") for c in args.captures.split(",")]

    def settings(out: Path, capture: str, codec: str = "bitrows") -> "actdb.IngestSettings":
        return actdb.IngestSettings(model=str(mdir), corpus=(str(corpus),), out=str(out), seq_len=args.seq_len,
                                    batch_size=args.batch_size, max_tokens=args.tokens, capture=capture,
                                    codec=codec, progress=False, offload="off", index=False)

    pairs: dict[tuple[str, str], list[dict[str, float]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        # untimed: pays the one-time costs (model file into the page cache, kernel set-up, loading
        # the capture's compiled kernel) and gives the token rows the bare forwards run over
        ref = Path(tmp) / "reference"
        actdb.ingest.run(settings(ref, variants[0][0]))
        store = actdb.open(ref)
        storage = store_storage(ref)
        ids, full, k = bare_rows(store)
        ntok, nfwd = int(store.n_tokens), int(full[-1])
        # the host's speed drifts within a run (RESULTS.md): each ingest is paired with a bare base
        # forward just before it, and the ratios of the pairs are compared, not times across the run
        for _ in range(args.repeats):
            for c, codec in variants:
                b, bc = bare_forward(mdir, ids, full, args.batch_size, base=True)
                out = Path(tmp) / f"{c}-{codec}"
                t0, c0 = time.perf_counter(), time.process_time()
                summary = actdb.ingest.run(settings(out, c, codec).replace(overwrite=True))
                pairs[(c, codec)].append({"base": b * k, "base cpu": bc * k, "ingest": time.perf_counter() - t0,
                                 "ingest cpu": time.process_time() - c0, "loop": summary.forward_seconds})
        b, bc = bare_forward(mdir, ids, full, args.batch_size, base=True)
        f, fc = bare_forward(mdir, ids, full, args.batch_size, base=False)
    full_over_base, full_over_base_cpu = f / b, fc / bc
    print(f"# {args.model} ({mdir}), {ntok:,} tokens ingested, bare forwards over the {nfwd:,} tokens of its "
          f"full-length sequences; seq_len {args.seq_len}, batch {args.batch_size}; {args.repeats} rounds of "
          f"(bare base forward, ingest) per capture and codec; medians of the pairs' ratios")
    print("# loop ÷ base, per round: " + "; ".join(f"{c}: " + " / ".join(f"{p['loop'] / p['base']:.3f}" for p in pairs[(c, codec)])
                                                 for c, codec in variants))
    print(f"# full model (LM head included) ÷ base model, a final pair: wall {full_over_base:.2f}, CPU {full_over_base_cpu:.2f}")
    med = lambda xs: float(np.median(xs))  # noqa: E731
    rows = []
    for c, codec in variants:
        ps = pairs[(c, codec)]
        e2e = med([p["ingest"] / p["base"] for p in ps])
        e2e_cpu = med([p["ingest cpu"] / p["base cpu"] for p in ps])
        loop = med([p["loop"] / p["base"] for p in ps])
        rows.append([f"`--capture {c} --codec {codec}`", " / ".join(f"{p['base']:.1f}" for p in ps),
                     " / ".join(f"{p['ingest']:.1f}" for p in ps), f"**{loop:.3f}**", f"**{loop / full_over_base:.3f}**",
                     f"**{e2e:.2f}**",
                     f"{e2e_cpu:.2f}", f"**{e2e / full_over_base:.2f}**", f"{e2e_cpu / full_over_base_cpu:.2f}"])
    print(table(["ingest", "bare base forward s (per round)", "actdb ingest s (per round)", "loop ÷ base",
                 "loop ÷ full model", "end to end ÷ base", "CPU ÷ base", "end to end ÷ full model", "CPU ÷ full model"], rows))
    print()
    print(table(STORAGE_HEADER, [storage_row(f"{args.model}, capture none", storage)]))


if __name__ == "__main__":
    main()
