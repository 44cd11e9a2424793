"""Explorer: one store (under one fire rule) as the explore functions read it.

It hands each thread its own handle on the store's database (a DuckDB cursor, so a long
statement in one thread never blocks another), runs a page's statements under one time limit,
and keeps what a read-only store never changes: the token arrays, the vocabulary, and whatever
a caller asks it to keep (`cached`: the layer tables, the store overview, a server's figures).
What came from the index is forgotten when the index is rebuilt (the handle's `generation`).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import NotFound


@dataclass(frozen=True)
class TokenArrays:
    """Token columns of the first rows in row order, each row's sequence bounds (cut at the last
    row held), and per-token-id occurrences over those rows."""
    ids: np.ndarray        # token id per row
    seq: np.ndarray
    pos: np.ndarray
    doc: np.ndarray
    start: np.ndarray      # the first row of the row's sequence
    end: np.ndarray        # the last row of the row's sequence
    counts: np.ndarray     # occurrences of each token id over the rows held (numpy's bincount)


class Explorer:
    """A store handle with per-thread handles, a time limit and caches (module docstring).
    threads=False (a one-shot caller such as `actdb neuron`): one handle, statements one after
    another. console_memory_mb: the memory of the console's own database (see `console_handle`)."""

    def __init__(self, store, name: str | None = None, timeout: float | None = None, threads: bool = False,
                 console_memory_mb: float | None = None) -> None:
        self.base = store
        self.name = name or Path(store.path).resolve().name
        self.manifest = store.manifest
        self.rule = store.rule
        self.timeout = timeout
        self.threads = threads
        self.console_memory_mb = console_memory_mb
        self._local = threading.local()
        self._lock = threading.Lock()
        self._console = None
        self._generation = store.refresh() if threads else store.generation
        self._cache: dict[Any, Any] = {}
        self._making: dict[Any, threading.Lock] = {}
        self._lru: OrderedDict[Any, Any] = OrderedDict()

    # ------------------------------------------------------------ handles
    def st(self):
        """This thread's handle on the store, after following a rebuilt index (the caches are
        checked against it first, so a page never mixes the old index with the new)."""
        if not self.threads:
            h = self.base
        else:
            h = getattr(self._local, "store", None)
            if h is None:
                h = self._local.store = self.base.thread_handle()
        self._sync(h.refresh())
        return h

    def _sync(self, generation: int) -> None:
        """Forget what was read from an older index."""
        if generation != self._generation:
            with self._lock:
                if generation != self._generation:
                    self._cache.clear()
                    self._lru.clear()
                    self._generation = generation

    def console_handle(self):
        """This thread's handle on the console's own database (opened on first use, one DuckDB
        thread and console_memory_mb of memory): a long console query takes one core, a large one
        stops at its limit, and the pages go on answering from the other database."""
        h = getattr(self._local, "console", None)
        if h is None:
            with self._lock:
                if self._console is None:
                    self._console = self.base.limited(threads=1, memory_mb=self.console_memory_mb)
            h = self._local.console = self._console.thread_handle()
        return h

    def q(self, sql: str, **params: Any):
        """One statement of a page: bound parameters, the time limit; a Polars DataFrame."""
        return self.st().sql(sql, params or None, timeout=self.timeout)

    def views(self) -> set[str]:
        return self.st().views()

    # ------------------------------------------------------------ caches
    def cached(self, key: Any, make: Callable[[], Any]) -> Any:
        """make() once per key and index generation (concurrent first callers wait for one)."""
        self.st()
        if key not in self._cache:
            with self._lock:
                one = self._making.setdefault(key, threading.Lock())
            with one:   # one lock per key: a slow figure holds up no other cached value
                if key not in self._cache:
                    self._cache[key] = make()
        return self._cache[key]

    def recent(self, key: Any, make: Callable[[], Any], keep: int) -> Any:
        """make() kept for the `keep` keys asked for last (per index generation)."""
        self.st()
        with self._lock:
            if key in self._lru:
                self._lru.move_to_end(key)
                return self._lru[key]
        value = make()
        with self._lock:
            self._lru[key] = value
            while len(self._lru) > keep:
                self._lru.popitem(last=False)
        return value

    def arrays(self, rows: int) -> TokenArrays:
        """The token arrays of the first `rows` rows: a bounded prefix (contexts: SCAN_ROWS and a
        window), so what a server keeps does not grow with the store."""
        rows = max(0, min(self.manifest.n_tokens, int(rows)))
        return self.cached(("arrays", rows), lambda: self._read_arrays(rows))

    def _read_arrays(self, rows: int) -> TokenArrays:
        t = self.q("SELECT token_id, seq, pos, doc FROM tokens WHERE row < $r ORDER BY row", r=rows)
        ids = t["token_id"].to_numpy().astype(np.int64)
        seq = t["seq"].to_numpy().astype(np.int64)
        pos = t["pos"].to_numpy().astype(np.int64)
        start = np.arange(len(ids)) - pos
        seq_len = np.bincount(seq) if len(seq) else np.zeros(0, np.int64)
        return TokenArrays(ids, seq, pos, t["doc"].to_numpy(), start, start + seq_len[seq] - 1,
                           np.bincount(ids, minlength=len(self.vocab())))

    def vocab(self) -> list[str]:
        """Token text by id (`#ID` for an id the vocabulary leaves without text)."""
        def read() -> list[str]:
            v = self.q("SELECT token_id, token FROM vocab ORDER BY token_id")
            out = [""] * (int(v["token_id"].max()) + 1 if v.height else 0)
            for i, t in zip(v["token_id"].to_list(), v["token"].to_list()):
                out[i] = t if t is not None else f"#{i}"
            return out
        return self.cached("vocab", read)

    def token_text(self, token_id: int) -> str:
        v = self.vocab()
        return v[token_id] if 0 <= token_id < len(v) else f"#{token_id}"

    def token_counts(self) -> dict[int, int]:
        """token_id -> occurrences as the index counts them (the token_counts view: every row but
        the BOS position), the denominator of P(fires | token)."""
        def read() -> dict[int, int]:
            tc = self.q("SELECT token_id, count FROM token_counts")
            return dict(zip(tc["token_id"].to_list(), tc["count"].to_list()))
        return self.cached("token_counts", read)

    # ------------------------------------------------------------ checks
    def check_layer(self, layer: int) -> None:
        if layer not in self.manifest.layers:
            raise NotFound(f"layer {layer}: not recorded in store {self.name} (recorded layers: "
                           f"{', '.join(map(str, self.manifest.layers))})")

    def check_neuron(self, layer: int, neuron: int) -> None:
        self.check_layer(layer)
        if not 0 <= neuron < self.manifest.d_ffn:
            raise NotFound(f"neuron {layer}:{neuron}: not in store {self.name} (neurons 0..{self.manifest.d_ffn - 1})")

    # ------------------------------------------------------------ side by side
    def side_by_side(self, jobs: dict[str, Callable[[], Any]]) -> dict[str, Any]:
        """Run independent callables, in worker threads when this explorer has them (each its
        own cursor; DuckDB releases the GIL, so a page's queries overlap instead of adding up)."""
        if not self.threads:
            return {k: fn() for k, fn in jobs.items()}
        futures = {k: _pool().submit(fn) for k, fn in jobs.items()}
        return {k: f.result() for k, f in futures.items()}

    def start(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """Start fn beside the caller (in a worker thread when this explorer has them); the
        returned callable waits for its result. Worker threads never wait on each other here:
        only the caller waits, so a busy pool cannot lock up."""
        if not self.threads:
            return fn
        return _pool().submit(fn).result


_POOL = None
_POOL_LOCK = threading.Lock()


def _pool():
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            from concurrent.futures import ThreadPoolExecutor

            _POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="actdb-explore")
    return _POOL


def explorer(store) -> Explorer:
    """`store` itself when it is an Explorer, else a one-shot Explorer over the handle."""
    return store if isinstance(store, Explorer) else Explorer(store)
