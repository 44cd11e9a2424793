"""The SQL console: one read-only statement (the engine of `actdb sql`: the store's files only,
bound parameters) on the console's own database, under a time limit and a row limit; past
either it is cut off and says so. An error is part of the answer, as one line."""
from __future__ import annotations

import time
import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import InputError, NotFound
from ..query.connection import QueryMemory, QueryTimeout
from .explorer import Explorer
from .thresholds import thresholds


@dataclass(frozen=True)
class SavedParam:
    name: str
    default: Any
    help: str
    source: str      # index_info.NAME: the default is that threshold of the index; else ""


@dataclass(frozen=True)
class Saved:
    name: str
    title: str
    reproduces: str
    sql: str
    params: tuple[SavedParam, ...]


@dataclass(frozen=True)
class Column:
    name: str
    type: str


@dataclass(frozen=True)
class ConsoleAnswer:
    sql: str
    params: dict[str, str]
    saved: tuple[Saved, ...]          # every saved query, to choose from
    chosen: Saved | None              # the saved query asked for
    max_rows: int
    timeout: float | None
    columns: tuple[Column, ...] = ()
    rows: tuple[tuple, ...] = ()
    truncated: bool = False           # more rows than max_rows: cut off
    error: str | None = None
    timed_out: bool = False
    seconds: float | None = None


def saved_list(ex: Explorer) -> tuple[Saved, ...]:
    """The saved queries with their defaults on this store (an index_info.NAME one: the index's)."""
    from ..query.catalogue import Recorded, defaults, saved_queries

    recorded = thresholds(ex)
    out = []
    for q in saved_queries():
        values = defaults(q, recorded)
        out.append(Saved(q.name, q.title, q.reproduces, q.sql,
                         tuple(SavedParam(k, values[k], q.param_help.get(k, ""), str(v) if isinstance(v, Recorded) else "")
                               for k, v in q.params.items())))
    return tuple(out)


def console(ex: Explorer, sql: str | None, params: dict[str, str], saved: str | None = None,
            max_rows: int = 1000, limit_hint: str = "") -> ConsoleAnswer:
    """Run `sql` (or saved query `saved`, its defaults under `params`) on the console's database
    of `ex`, answering up to max_rows rows. limit_hint: what to name with a time or memory limit
    (the options that set them)."""
    listed = saved_list(ex)
    chosen = None
    if saved:
        chosen = next((q for q in listed if q.name == saved), None)
        if chosen is None:
            raise NotFound(f"saved query {saved!r}: not among {', '.join(q.name for q in listed)}")
        if not sql:
            sql = chosen.sql
            params = {p.name: str(p.default) for p in chosen.params} | params
    answer = ConsoleAnswer(sql or "", params, listed, chosen, max_rows, ex.timeout)
    if not sql or not sql.strip():
        return answer
    t0 = time.perf_counter()
    try:
        with ex.console_handle().stream(sql, params, timeout=ex.timeout, timeout_hint=f"--timeout{limit_hint}") as res:
            columns = tuple(Column(n, t) for n, t in res.columns)
            rows = res.fetch(max_rows + 1)
    except InputError as e:   # bad SQL, a refused file, a time or memory limit: the user's to fix
        why = str(e) + (f" (--memory-mb {ex.console_memory_mb:g}{limit_hint})" if isinstance(e, QueryMemory) else "")
        return dataclasses.replace(answer, error=why, timed_out=isinstance(e, QueryTimeout))
    return dataclasses.replace(answer, columns=columns, rows=tuple(tuple(r) for r in rows[:max_rows]),
                    truncated=len(rows) > max_rows, seconds=round(time.perf_counter() - t0, 4))
