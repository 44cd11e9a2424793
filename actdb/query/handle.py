"""`actdb.open`: the read-only store handle with its SQL views."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..settings import RULE_PARAM
from ..store.reader import StoreReader


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

    def _db(self):
        con = getattr(self, "_con", None)
        if con is None:
            from .connection import connect

            con = self._con = connect(self)
        return con

    def views(self) -> set[str]:
        """Names of the SQL views this store offers (capture and projection views only where
        the store has them); read once per handle."""
        names = getattr(self, "_views", None)
        if names is None:
            names = self._views = set(self.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal")
                                      ["view_name"].to_list())
        return names

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
        from .catalogue import run_saved

        st, params = self._ruled(params)
        return _frame(run_saved(st, name_or_file, params, con=st._db(), timeout=timeout), arrow)

    def stream(self, query: str, params: dict[str, Any] | None = None, timeout: float | None = None,
               timeout_hint: str = "timeout", saved: bool = False):
        """Start a statement (a saved query with saved=True) and stream its answer: a
        connection.Result of Arrow record batches, for answers too large to hold."""
        from .catalogue import stream_saved
        from .connection import stream_sql

        run = stream_saved if saved else stream_sql
        st, params = self._ruled(params)
        return run(st, query, params, con=st._db(), timeout=timeout, timeout_hint=timeout_hint)


def _frame(table, arrow: bool):
    """A pyarrow Table as asked for: itself, or a Polars DataFrame."""
    if arrow:
        return table
    import polars as pl

    return pl.from_arrow(table)


def open(path: str | Path, rule: str | None = None) -> Store:  # noqa: A001 - the public name is actdb.open
    """Open a complete store read-only; rule: the fire rule its views and masks read (default the first)."""
    return Store(path, rule=rule)
