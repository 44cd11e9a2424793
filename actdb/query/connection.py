"""Connections: a DuckDB database with a store's views, and read-only user SQL with bound parameters."""
from __future__ import annotations

from typing import Any, Mapping

from ..errors import InputError, StoreError
from ..store.index_info import read_index_info
from ..store.layout import INDEX_CAPTURE_DIR, INDEX_PROJECTION_FILE, index_file
from .views import _views, massive_views, projection_views, register_proj_score


def connect(store, pre: bool = True):
    """An in-memory DuckDB connection with the views of `store` (an actdb.Store)."""
    import duckdb

    info = read_index_info(store.path)
    if info is None:
        raise StoreError(f"{store.path}: no index (run `actdb index {store.path}`)")
    con = duckdb.connect(":memory:")
    con.execute("SET enable_progress_bar = false")
    for stmt in _views(store.path, store.manifest, info, pre=pre):
        con.execute(stmt)
    extra = []
    if index_file(store.path, INDEX_CAPTURE_DIR).exists():
        extra += massive_views(store.path, info)
    if index_file(store.path, INDEX_PROJECTION_FILE).exists():
        register_proj_score(con, store.path)
        extra += projection_views(store.path, info)
    for stmt in extra:
        con.execute(stmt)
    # user SQL may read the store, never write files or change settings
    con.execute("SET lock_configuration = true")
    return con


def _check_read_only(con, sql: str):
    import duckdb

    try:
        stmts = con.extract_statements(sql)
    except duckdb.Error as e:
        raise InputError(_one_line(e)) from None
    if len(stmts) != 1:
        raise InputError(f"expected one SQL statement, got {len(stmts)}")
    st = stmts[0]
    # only queries: EXPLAIN is refused too, since EXPLAIN ANALYZE runs the statement it explains
    if st.type != duckdb.StatementType.SELECT:
        raise InputError(f"read-only: expected a query (SELECT, WITH, FROM …, DESCRIBE, SUMMARIZE), got a "
                         f"{st.type.name} statement; the store is never written")
    return st


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def coerce_param(value: Any) -> Any:
    """CLI parameter text -> int, float, bool or str."""
    if not isinstance(value, str):
        return value
    for conv in (int, float):
        try:
            return conv(value)
        except ValueError:
            pass
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def run_sql(store, sql: str, params: Mapping[str, Any] | None = None, con=None):
    """Run one read-only statement with named parameters ($name) bound; returns a pyarrow Table."""
    import duckdb

    con = con or connect(store)
    st = _check_read_only(con, sql)
    params = {k: coerce_param(v) for k, v in (params or {}).items()}
    needed = set(st.named_parameters)
    missing = sorted(needed - set(params))
    if missing:
        raise InputError(f"parameters: expected values for {', '.join('$' + m for m in missing)}, got none "
                         "(pass -p NAME VALUE)")
    extra = sorted(set(params) - needed)
    if extra:
        raise InputError(f"parameters: {', '.join(extra)} not used by the query (it uses "
                         f"{', '.join('$' + n for n in sorted(needed)) or 'none'})")
    try:
        return con.sql(sql, params=params or None).to_arrow_table()
    except duckdb.Error as e:
        raise InputError(_one_line(e)) from None
