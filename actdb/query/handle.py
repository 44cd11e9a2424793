"""`actdb.open`: the read-only store handle with its SQL views."""
from __future__ import annotations

import copy
import threading
from typing import Any

from ..grammar import RULE_PARAM
from ..store.reader import StoreReader
from .connection import ensure_all_views, frame as _frame


def _owned_by_connection(key: str) -> property:
    """An attribute kept by the handle that owns the DuckDB connection (its thread handles share it)."""
    def get(self):
        return (self.__dict__.get("_parent") or self).__dict__.get(key)

    def put(self, value) -> None:
        (self.__dict__.get("_parent") or self).__dict__[key] = value
    return property(get, put)


class Store(StoreReader):
    """Read-only handle on a complete store: its files (StoreReader) and its SQL views, those of
    its fire rule (`rule`; a `rule` parameter of a call picks another recorded rule)."""

    def with_rule(self, rule: str | None) -> "Store":
        if rule is None or str(rule) == self.rule:
            return self
        cache = self.__dict__.setdefault("_rule_handles", {})   # one connection per rule and handle
        if str(rule) not in cache:
            cache[str(rule)] = super().with_rule(rule)
        return cache[str(rule)]

    def _ruled(self, params: dict[str, Any] | None) -> tuple["Store", dict[str, Any] | None]:
        """The handle whose views answer a call, and the call's other parameters."""
        if not params or RULE_PARAM not in params:
            return self, params
        rest = dict(params)
        return self.with_rule(rest.pop(RULE_PARAM)), rest

    generation = 0   # how many times the handle reconnected to a rebuilt index

    # the file records of the connection's views (store/parquet_guard.py) and what each view reads
    # (query/dependencies.py) belong to the handle that owns the connection: a thread's handle uses
    # its parent's, made anew with each reconnection
    _parquet_guard = _owned_by_connection("_guard")
    _view_deps = _owned_by_connection("_deps")

    def _connect(self):
        from .connection import connect

        return connect(self)

    def _index_key(self) -> tuple:
        """The identity (stat) of the index records this handle's views read: another after an
        `actdb index --force` swapped a rebuilt index in."""
        from ..files import stat_key
        from ..store.index_info import index_path
        from ..store.layout import INDEX_FILE, rule_dir

        return tuple(stat_key(index_path(rule_dir(self.path, r)) / INDEX_FILE)
                     for r in dict.fromkeys((self.rule, self.rules[0])))

    def _db(self):
        """This handle's DuckDB connection with its views; made again (views, file records and all)
        when the index was rebuilt since, so a long-lived handle (a running `actdb serve`) answers
        from the new index, never from a mix."""
        parent = self.__dict__.get("_parent")
        if parent is not None:   # a thread's handle: a cursor of its parent's connection
            pcon = parent._db()
            if self.__dict__.get("_from") is not pcon:
                self._con, self._from = pcon.cursor(), pcon
                self.__dict__.pop("_views", None)
            return self._con
        with self._lock():
            con = self.__dict__.get("_con")
            key = self._index_key()
            if con is not None and key != self.__dict__.get("_con_key"):
                self.check_current()   # a store written again is an error, not a reconnect
                con.close()
                for name in ("_con", "_views", "_guard", "_deps"):
                    self.__dict__.pop(name, None)
                self.generation += 1
                con = None
            if con is None:
                con = self._con = self._connect()
                self._con_key = key
                if self.__dict__.get("_shared"):   # a cursor sees only the views made on its connection
                    ensure_all_views(self, con)
            return con

    def _lock(self) -> threading.Lock:
        return self.__dict__.setdefault("_reconnect", threading.Lock())

    def thread_handle(self) -> "Store":
        """A handle for another thread on the same database (its own DuckDB cursor, so a long
        statement in one thread never blocks another), following this one across a rebuild."""
        con = self._db()
        with self._lock():
            if not self.__dict__.get("_shared"):
                self._shared = True
                ensure_all_views(self, con)
        h = copy.copy(self)
        h.__dict__.pop("_con", None)
        h.__dict__.pop("_from", None)
        h._parent = self
        return h

    def refresh(self) -> int:
        """Follow a rebuilt index now (see _db) and return the generation: a caller keeping what it
        read from the index (a running server) compares it to know when to forget that."""
        self._db()
        return (self.__dict__.get("_parent") or self).generation

    def limited(self, threads: int, memory_mb: float) -> "Store":
        """A handle on the same store and rule with a database of its own, whose statements run on at
        most `threads` DuckDB threads and `memory_mb` MiB: one long or large query (a console's)
        neither holds up nor grows the process's other queries."""
        h = _LimitedStore(self.path, rule=self.rule)
        h.threads, h.memory_mb = threads, memory_mb
        return h

    def views(self) -> set[str]:
        """Names of the SQL views this store offers (capture and projection views only where
        the store has them); read once per handle and connection."""
        self._db()   # after a rebuild, the views of the new index
        names = self.__dict__.get("_views")
        if names is None:
            names = set(self.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal")["view_name"].to_list())
            self._views = names
        return names

    def rebuilt(self) -> bool:
        """Whether the index was swapped since this handle's connection was made (a statement
        that failed meanwhile is told so, not that a file changed)."""
        root = self.__dict__.get("_parent") or self
        return self._index_key() != root.__dict__.get("_con_key")

    def sql(self, query: str, params: dict[str, Any] | None = None, arrow: bool = False,
            timeout: float | None = None):
        """Run one read-only SQL statement over the views (see actdb.query); `$name` parameters
        are bound from params. The statement reads only this store's files. timeout: seconds
        after which it is interrupted (QueryTimeout, an InputError); None: no limit.
        Returns a Polars DataFrame (pyarrow Table with arrow=True)."""
        from .connection import run_sql

        st, params = self._ruled(params)
        return _frame(run_sql(st, query, params, con=st._db(), timeout=timeout), arrow)

    def query(self, name_or_file: str, params: dict[str, Any] | None = None, arrow: bool = False,
              timeout: float | None = None):
        """Run a saved query (a name from queries/ or a .sql file) with its header's defaults."""
        from .catalogue import find_query, run_saved

        if find_query(name_or_file).across:
            return _frame(self.stream(name_or_file, params, timeout, saved=True).read_all(), arrow)
        st, params = self._ruled(params)
        return _frame(run_saved(st, name_or_file, params, con=st._db(), timeout=timeout), arrow)

    def neighbours(self, layer: int, neuron: int, k: int = 20, by: str = "phi", layers: list[int] | None = None,
                   rule: str | None = None, domain: str | None = None, pos_min: int | None = None,
                   pos_max: int | None = None) -> list:
        """Neuron (layer, neuron) against every neuron of `layers` (default all): its top k by `by`
        (phi, jaccard or p), exact counts over the rows of `domain` and positions pos_min..pos_max
        (default all), as actdb.cofire.Neighbour (docs/definitions.md, "Co-firing")."""
        from ..cofire import TokenSubset, neighbours

        return neighbours(self, layer, neuron, k, by, layers, rule, TokenSubset(domain, pos_min, pos_max))

    def indexed_neighbours(self, layer: int, neuron: int, scope: str = "all", rule: str | None = None) -> list | None:
        """Neuron (layer, neuron)'s top neighbours by phi as the index keeps them (`actdb index --neighbours K`),
        within its layer (scope 'layer') or over every layer ('all'), as actdb.cofire.Neighbour; None when
        the index has no co-firing table (then `neighbours` counts them from the masks)."""
        from ..cofire import SCOPES, Neighbour
        from ..errors import InputError

        if scope not in SCOPES:
            raise InputError(f"scope: expected one of {', '.join(SCOPES)}, got {scope!r}")
        st = self.with_rule(rule)
        if "neuron_neighbours" not in st.views():
            return None
        rows = st.sql("SELECT layer, neuron, other_layer, other_neuron, n_a, n_b, n_both, jaccard, p_other_given, phi, "
                      "rank FROM neuron_neighbours WHERE layer = $l AND neuron = $n AND scope = $s ORDER BY rank",
                      {"l": int(layer), "n": int(neuron), "s": scope}).rows()
        return [Neighbour(*r[:7], st.n_tokens, *r[7:]) for r in rows]

    def stream(self, query: str, params: dict[str, Any] | None = None, timeout: float | None = None,
               timeout_hint: str = "timeout", saved: bool = False):
        """Start a statement (a saved query with saved=True) and stream its answer: a
        connection.Result of Arrow record batches, for answers too large to hold. A saved query
        across models runs on the store alone, as the unions of one store (query/across.py)."""
        from .catalogue import find_query, stream_saved
        from .connection import stream_sql

        run = stream_saved if saved else stream_sql
        st, params = self._ruled(params)
        if saved and find_query(query).across:
            from .across import alone

            return alone(st).stream(query, params, timeout=timeout, timeout_hint=timeout_hint, saved=True)
        return run(st, query, params, con=st._db(), timeout=timeout, timeout_hint=timeout_hint)


class _LimitedStore(Store):
    threads: int | None = None
    memory_mb: float | None = None

    def _connect(self):
        from .connection import connect

        return connect(self, threads=self.threads, memory_mb=self.memory_mb)

    def with_rule(self, rule: str | None) -> "Store":
        h = super().with_rule(rule)   # the same limits under another rule
        h.threads, h.memory_mb = self.threads, self.memory_mb
        return h


def open(path, rule: str | None = None):  # noqa: A001 - the public name is actdb.open
    """Open a complete store read-only; rule: the fire rule its views and masks read (default the first).
    Several stores at once: a list of paths or `NAME=PATH` strings, or {name: path}, gives a
    query.across.Stores, each store's views under its schema and their unions unqualified."""
    if isinstance(path, (list, tuple, dict)):
        from .across import open_stores

        return open_stores(path, Store, rule)
    return Store(path, rule=rule)
