"""Fault points: named places in the write paths where a test can kill the process on purpose.

A crash test chooses *where* a writer dies, so it passes or fails by what the code does there,
never by when a timer happened to fire:

    ACTDB_FAULT=NAME:N        SIGKILL this process the N-th time it reaches point NAME (1-based)
    ACTDB_FAULT_TRACE=FILE    append one line per point reached ("NAME detail"), so a test can
                              count the points of an uninterrupted run and pick among them

The points (see their callers):
    atomic-tmp    files.atomic_path: the new bytes are in the temporary file, not yet renamed over
    atomic-done   files.atomic_path: renamed, the folder not yet synced
    unit-done     the index build: a unit's parts are in place, not yet recorded as done
    mask-layer    ingest: one layer of a mask block is written (detail: the block), the block
                  not yet committed

Unset (the normal case) a point costs two environment look-ups.
"""
from __future__ import annotations

import os
import signal
import threading

FAULT_ENV = "ACTDB_FAULT"
TRACE_ENV = "ACTDB_FAULT_TRACE"
_counts: dict[str, int] = {}
_lock = threading.Lock()


def point(name: str, detail: str = "") -> None:
    """Reached fault point `name`: traced and/or killed here when the environment asks for it."""
    spec, trace = os.environ.get(FAULT_ENV), os.environ.get(TRACE_ENV)
    if not spec and not trace:
        return
    with _lock:   # the index build reaches points from several threads
        n = _counts[name] = _counts.get(name, 0) + 1
        if trace:
            with open(trace, "a", encoding="utf-8") as f:
                f.write(f"{name} {detail}".rstrip() + "\n")
        if spec and spec == f"{name}:{n}":
            os.kill(os.getpid(), signal.SIGKILL)


def traced(path: str | os.PathLike) -> list[str]:
    """The point names a run traced to `path` (ACTDB_FAULT_TRACE), in order."""
    with open(path, encoding="utf-8") as f:
        return [line.split(" ", 1)[0] for line in f.read().splitlines() if line]
