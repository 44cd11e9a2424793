"""The hooks' helper threads on CPU: work split over torch's thread count, one share in the
calling thread and the others in a pool made once. The forward's OpenMP workers go to sleep soon
after its last operation (devices.quiet_openmp), so a hook's compiled kernels and numpy selections,
which release the GIL, can use their cores; with torch's default spin the pool's thread only
competed with a spinning worker (benchmarks/RESULTS.md, "Ingest overhead, third pass")."""
from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np
import torch

_POOLS: dict = {}   # thread count -> executor, made once


def threads() -> int:
    """How many threads a hook's work is split over: torch's intra-op thread count."""
    return max(1, torch.get_num_threads())


def in_threads(fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
    """[fn(item) for item in items], the first in the calling thread and the others in a pool of
    threads() - 1 (fn must release the GIL to gain anything)."""
    items = list(items)
    if threads() == 1 or len(items) <= 1:
        return [fn(i) for i in items]
    n = threads() - 1
    if n not in _POOLS:
        from concurrent.futures import ThreadPoolExecutor

        _POOLS[n] = ThreadPoolExecutor(n, thread_name_prefix="actdb-hook")
    futures = [_POOLS[n].submit(fn, i) for i in items[1:]]
    first = fn(items[0])
    return [first, *(f.result() for f in futures)]


def shares(starts: np.ndarray, n: int | None = None) -> list[range]:
    """Split parts (part j: rows starts[j]..starts[j+1]) into up to n (default threads()) contiguous
    ranges of about equal rows, none empty; a part is never cut."""
    n = threads() if n is None else n
    cuts = np.abs(starts[:, None] - np.linspace(0, starts[-1], n + 1)[None, 1:-1]).argmin(axis=0)  # nearest boundaries
    bounds = [0, *sorted(set(int(c) for c in cuts)), len(starts) - 1]
    return [range(lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]
