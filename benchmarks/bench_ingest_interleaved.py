"""Ingest overhead, batch by batch: inside one `actdb ingest`, each batch of full-length sequences is
forwarded once more, right before, by a second copy of the base model without hooks, and the loop's
seconds are divided by those bare forwards' over the same batches.

    .venv/bin/python benchmarks/bench_ingest_interleaved.py --model smollm2 --tokens 98304 --repeats 2

bench_ingest_overhead.py pairs whole runs (a bare forward over all tokens, then the ingest): the host's
speed drifts over minutes, and one pair's ratio moved by ±3 % on the 2-core VM. Here each pair is one
batch, 2-3 seconds apart, so the drift cancels; the ratio is the same quantity (the ingest's forward
loop, hooks, packing, handing blocks to the writer, ÷ the bare base forward over the same tokens).
The writer thread runs beside both forwards of a pair, which flatters the ingest by at most its CPU
time (printed). Batches that are not full-length (the last one) have no bare pair and count on
neither side. actdb is imported before torch (its OpenMP setting) and the bare forwards run under the
forward loop's malloc thresholds (devices.steady_malloc), as in bench_ingest_overhead.py.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
import actdb  # noqa: E402  (before torch, as the CLI: devices.quiet_openmp)
import actdb.ingest.forward as forward  # noqa: E402
import torch  # noqa: E402
from _common import stamp, table  # noqa: E402
from bench_ingest_parts import SECONDS, loop_args, loop_settings, timed_thread_cpu  # noqa: E402


def main() -> None:
    from transformers import AutoModelForCausalLM

    from actdb.devices import steady_malloc

    args = loop_args(98304)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    steady_malloc()
    pairs: list[tuple[float, float]] = []   # (bare s, loop s) per full-length batch
    unpaired = [0.0]

    original = forward.ForwardLoop._batch

    def paired(self, hooks, lo: int, hi: int) -> float:
        lengths = np.diff(self.offsets[lo:hi + 1])
        if not (lengths == args.seq_len).all():
            unpaired[0] += (t := original(self, hooks, lo, hi))
            return t
        ids = torch.from_numpy(np.stack([self.token_ids[self.offsets[i]:self.offsets[i + 1]]
                                         for i in range(lo, hi)]).astype(np.int64))   # [batch, seq]
        with torch.inference_mode():
            t0 = time.perf_counter()
            bare(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
            b = time.perf_counter() - t0
        t = original(self, hooks, lo, hi)
        pairs.append((b, t))
        return t
    forward.ForwardLoop._batch = paired

    timed_thread_cpu(forward.BlockWriter, "run", "writer CPU")

    print(stamp(), f"{args.model}, {args.tokens:,} tokens, capture {args.capture}, batches of {args.batch_size} x "
                   f"{args.seq_len}, torch threads {torch.get_num_threads()}")
    rows = []
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        s = loop_settings(args, tmp)
        bare = AutoModelForCausalLM.from_pretrained(s.model, dtype=torch.float32).eval().base_model
        actdb.ingest.run(s)   # untimed: page cache, kernels, the staged tokens
        for r in range(args.repeats):
            pairs.clear()
            unpaired[0] = SECONDS["writer CPU"] = 0.0
            summary = actdb.ingest.run(s.replace(overwrite=True))
            b = np.array([p[0] for p in pairs])
            t = np.array([p[1] for p in pairs])
            # the loop's seconds outside the paired batches (flushing the last block) count against it
            rest = summary.forward_seconds - t.sum() - unpaired[0]
            ratio = (t.sum() + rest) / b.sum()
            rows.append([r + 1, len(pairs), f"{b.sum():.1f}", f"{t.sum() + rest:.1f}", f"**{ratio:.3f}**",
                         f"{np.median(t / b):.3f}", f"{np.percentile(t / b, 10):.3f} - {np.percentile(t / b, 90):.3f}",
                         f"{rest:.2f}", f"{SECONDS['writer CPU']:.2f}"])
            print(f"round {r + 1}: {ratio:.3f}", flush=True)
    print(table(["round", "paired batches", "bare s", "loop s", "loop ÷ bare", "median batch ratio",
                 "batch ratios p10 - p90", "loop s unpaired (last flush)", "writer CPU s"], rows))


if __name__ == "__main__":
    main()
