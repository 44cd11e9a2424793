"""Where the ingest loop's time goes beyond a bare forward: wall-clock timers around its parts,
in one process, each ingest right after a bare base-model forward over the same token rows.

    .venv/bin/python benchmarks/bench_ingest_parts.py --model smollm2 --tokens 65536 --repeats 2

Parts (seconds per ingest): `stats` the capture statistics (capture.layer_stats: the held values'
in one pass, after each forward or in a hook once capture.HOLD_BYTES are held), `compare` the sign
rule's act > 0 (its reading, in the hooks, where a batch is padded), `pack` the fire bits packed (the
sign rule's straight from the values, packing.pack_positive, or packing.pack_rows), `assemble` the packed bytes
stacked on the host and copied into blocks (ForwardLoop._push), `writer wait` the forward standing
still for the writer, `writer CPU` the writer thread's CPU seconds (beside the forward); `forward`
what remains of the hooked forward, against the bare forward: the
model's own work plus the hooks' compares and dispatch, slowed by whatever else takes a core (the
writer thread). The timers cost a few microseconds a call. The largest single calls of `assemble`
are listed too: a fresh block buffer's page faults show there. A diagnostic, not a target:
bench_ingest_overhead.py gives the ratio.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
import actdb  # noqa: E402  (before torch, as the CLI imports it: devices.quiet_openmp)
import actdb.ingest.forward as forward  # noqa: E402
import actdb.ingest.hooks as hooks  # noqa: E402
import actdb.ingest.packing as packing  # noqa: E402
from _common import WORK, opt125m_random, smollm2, stamp, text_corpus  # noqa: E402
from bench_ingest_overhead import bare_forward, bare_rows  # noqa: E402

SECONDS: dict[str, float] = collections.defaultdict(float)
CALLS: dict[str, list[float]] = collections.defaultdict(list)


def timed(owner, name: str, part: str) -> None:
    """Wrap owner.name (a module function or a method) with a timer adding to SECONDS[part]."""
    f = getattr(owner, name)

    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return f(*args, **kwargs)
        finally:
            dt = time.perf_counter() - t
            SECONDS[part] += dt
            CALLS[part].append(dt)
    try:
        setattr(owner, name, wrapper)
    except dataclasses.FrozenInstanceError:   # a Reading
        object.__setattr__(owner, name, wrapper)


def timed_thread_cpu(owner, name: str, part: str) -> None:
    """Wrap owner.name, a thread's run method, adding the thread's CPU seconds to SECONDS[part]."""
    f = getattr(owner, name)

    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        finally:
            SECONDS[part] += time.thread_time()
    setattr(owner, name, wrapper)


def loop_args(tokens: int) -> argparse.Namespace:
    """The options of the loop benchmarks: this one and bench_ingest_interleaved.py."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=("opt125m", "smollm2"), default="smollm2")
    ap.add_argument("--tokens", type=int, default=tokens)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--capture", default="resid")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--work", default=str(WORK))
    return ap.parse_args()


def loop_settings(args: argparse.Namespace, tmp: str) -> "actdb.IngestSettings":
    """The ingest the loop benchmarks time, into tmp/store (index off, no progress bar)."""
    mdir = opt125m_random() if args.model == "opt125m" else smollm2()
    return actdb.IngestSettings(model=str(mdir), corpus=(str(text_corpus()),), out=str(Path(tmp) / "store"),
                                seq_len=args.seq_len, batch_size=args.batch_size, max_tokens=args.tokens,
                                capture=args.capture, progress=False, offload="off", index=False)


def main() -> None:
    args = loop_args(65536)
    timed(hooks, "layer_stats", "stats")           # hooks.py calls it by this name (magnitude_stats off CPU)
    timed(packing, "pack_rows", "pack")            # RowPacker calls the module's function
    timed(hooks.POSITIVE, "derive", "compare")     # the sign rule's reading, act > 0 (a padded batch)
    timed(hooks.POSITIVE, "pack", "pack")          # ... and its bits packed straight from the values
    timed_thread_cpu(forward.BlockWriter, "run", "writer CPU")
    timed(hooks.LayerHooks, "forward", "hooked forward")
    timed(forward.ForwardLoop, "_push", "assemble")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(stamp(), f"{args.model}, {args.tokens:,} tokens, capture {args.capture}")
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        s = loop_settings(args, tmp)
        mdir = Path(s.model)
        actdb.ingest.run(s)   # untimed: page cache, kernels, and the token rows
        ids, full, scale = bare_rows(actdb.open(s.out))
        print("| round | bare forward s | loop s | loop ÷ bare | stats | pack | assemble (largest calls) | "
              "writer wait | writer CPU | compare | forward beyond bare |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in range(args.repeats):
            bare, _ = bare_forward(mdir, ids, full, args.batch_size, base=True)
            bare *= scale
            SECONDS.clear()
            CALLS.clear()
            summary = actdb.ingest.run(s.replace(overwrite=True))
            loop = summary.forward_seconds
            fwd = SECONDS["hooked forward"] - SECONDS["stats"] - SECONDS["pack"] - SECONDS["compare"]
            big = ", ".join(f"{x:.2f}" for x in sorted(CALLS["assemble"])[-2:])
            print(f"| {r + 1} | {bare:.2f} | {loop:.2f} | {loop / bare:.3f} | {SECONDS['stats']:.2f} | "
                  f"{SECONDS['pack']:.2f} | {SECONDS['assemble']:.2f} ({big}) | {summary.writer_wait_seconds:.2f} | "
                  f"{SECONDS['writer CPU']:.2f} | {SECONDS['compare']:.2f} | {fwd - bare:+.2f} ({(fwd - bare) / bare:+.1%}) |")


if __name__ == "__main__":
    main()
