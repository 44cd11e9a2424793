"""The saved-query catalogue: the .sql files of queries/, each with a header naming what it
reproduces and its `-- param: name = default  help` lines. A default `index_info.NAME` is the
threshold NAME the store's index was built with (the views' default too), so a saved query
answers at the store's thresholds unless a parameter is given."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import InputError
from .connection import coerce_param, run_sql, stream_sql
from ..grammar import RULE_PARAM
from ..settings import THRESHOLDS

RULE_LINE = f"${RULE_PARAM} = (the store's first)  fire rule whose masks the views count (one the store recorded)"
RECORDED_NOTE = "A default index_info.NAME is the threshold NAME the store's index was built with (actdb index --NAME)."


def _queries_dir() -> Path:
    """queries/ of a checkout (the source, so edits show at once), else the copy a wheel ships
    in actdb/query/saved/ (setup.py copies queries/ there at build time)."""
    here = Path(__file__).resolve().parent
    source = here.parents[1] / "queries"
    if (here.parents[1] / "pyproject.toml").is_file() and source.is_dir():
        return source
    return here / "saved"


QUERIES_DIR = _queries_dir()


@dataclass(frozen=True)
class Recorded:
    """A parameter's default that is a threshold of the store's index record (`index_info.p_cov`)."""
    threshold: str   # one of settings.THRESHOLDS

    def __str__(self) -> str:
        return f"index_info.{self.threshold}"


@dataclass(frozen=True)
class SavedQuery:
    name: str
    path: Path
    title: str
    reproduces: str
    params: dict[str, Any] = field(default_factory=dict)
    sql: str = ""
    param_help: dict[str, str] = field(default_factory=dict)
    across: str = ""   # the header's `-- across:` line: a query over several stores, reading the unions


_PARAM = re.compile(r"^--\s*param:\s*(\w+)\s*=\s*(\S+)\s*(.*)$")


def parse_query_file(path: Path) -> SavedQuery:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"{path}: cannot read query file ({e.strerror})") from None
    title = reproduces = across = ""
    params: dict[str, Any] = {}
    helps: dict[str, str] = {}
    for line in text.splitlines():
        if not line.startswith("--"):
            continue
        mp = _PARAM.match(line)
        if mp:
            params[mp.group(1)] = _default(mp.group(2), f"{path}: param {mp.group(1)}")
            helps[mp.group(1)] = mp.group(3).strip()
        elif line.lower().startswith("-- title:"):
            title = line.split(":", 1)[1].strip()
        elif line.lower().startswith("-- reproduces:"):
            reproduces = line.split(":", 1)[1].strip()
        elif line.lower().startswith("-- across:"):
            across = line.split(":", 1)[1].strip() or "models"
    return SavedQuery(Path(path).stem, Path(path), title, reproduces, params, text, helps, across)


def _default(text: str, where: str) -> Any:
    if not text.startswith("index_info."):
        return coerce_param(text)
    name = text.split(".", 1)[1]
    if name not in THRESHOLDS:
        raise InputError(f"{where}: expected index_info.THRESHOLD with THRESHOLD one of {', '.join(THRESHOLDS)}, "
                         f"got {text!r}")
    return Recorded(name)


def saved_queries(folder: Path | None = None) -> list[SavedQuery]:
    folder = Path(folder) if folder else QUERIES_DIR
    return [parse_query_file(p) for p in sorted(folder.glob("*.sql"))]


def find_query(name_or_file: str | SavedQuery) -> SavedQuery:
    """A saved query by name, or a .sql file (a name with a .sql suffix or a folder in it is a file)."""
    if isinstance(name_or_file, SavedQuery):
        return name_or_file
    p = Path(name_or_file)
    if p.suffix == ".sql" or len(p.parts) > 1:
        if p.is_file():
            return parse_query_file(p)
        what = "is not a file" if p.exists() else "no such file"
        raise InputError(f"query: {name_or_file}: {what}")
    cand = QUERIES_DIR / f"{name_or_file}.sql"
    if cand.exists():
        return parse_query_file(cand)
    names = ", ".join(q.name for q in saved_queries())
    raise InputError(f"query: expected a .sql file or one of {names}, got {name_or_file!r}")


def recorded_thresholds(store, con=None) -> dict[str, Any]:
    """The thresholds `store`'s index was built with (its index_info view), by name; `con`: the
    connection of the statement they are for (default the handle's)."""
    sql = f"SELECT {', '.join(THRESHOLDS)} FROM index_info"
    table = store.sql(sql, arrow=True) if con is None else run_sql(store, sql, con=con)
    return table.to_pylist()[0]


def defaults(q: SavedQuery, recorded: Mapping[str, Any]) -> dict[str, Any]:
    """The header's defaults of `q`, an `index_info.NAME` one taken from `recorded` (recorded_thresholds)."""
    return {k: recorded[v.threshold] if isinstance(v, Recorded) else v for k, v in q.params.items()}


def parameters(store, name_or_file: str | SavedQuery, params: Mapping[str, Any] | None = None,
               con=None) -> dict[str, Any]:
    """The values a saved query runs with on `store`: its header's defaults (an index_info.NAME one
    from the store's index record; over several stores NULL, which the union macros read as each
    store's own), overridden by `params`."""
    q = find_query(name_or_file)
    given = {k: coerce_param(v) for k, v in (params or {}).items()}
    unknown = sorted(set(given) - set(q.params) - {RULE_PARAM})   # every query takes the rule
    if unknown:
        raise InputError(f"parameters: {', '.join(unknown)} unknown to query {q.name} "
                         f"(it takes {', '.join(q.params) or 'none'})")
    if getattr(store, "several", False):   # a query.across.Stores
        return {**{k: None if isinstance(v, Recorded) else v for k, v in q.params.items()}, **given}
    if any(isinstance(v, Recorded) and k not in given for k, v in q.params.items()):
        return {**defaults(q, recorded_thresholds(store, con)), **given}
    return {**q.params, **given}


def run_saved(store, name_or_file: str, params: Mapping[str, Any] | None = None, con=None,
              timeout: float | None = None):
    """A saved query's whole answer as a pyarrow Table (see parameters)."""
    q = find_query(name_or_file)
    return run_sql(store, q.sql, parameters(store, q, params, con), con=con, timeout=timeout)


def stream_saved(store, name_or_file: str, params: Mapping[str, Any] | None = None, con=None,
                 timeout: float | None = None, timeout_hint: str = "timeout"):
    """A saved query's answer as a stream of record batches (connection.Result; see parameters)."""
    q = find_query(name_or_file)
    return stream_sql(store, q.sql, parameters(store, q, params, con), con=con, timeout=timeout,
                      timeout_hint=timeout_hint)


def _param_lines(q: SavedQuery, indent: str) -> list[str]:
    width = max((len(f"${k} = {v}") for k, v in q.params.items()), default=0)
    return [f"{indent}{f'${k} = {v}':{width}s}  {q.param_help.get(k, '')}".rstrip()
            for k, v in q.params.items()] + [indent + RULE_LINE]


def list_lines() -> list[str]:
    """`actdb query --list`: each query, what it reproduces, its title and its parameters."""
    out = [RECORDED_NOTE, ""]
    for q in saved_queries():
        out.append(f"{q.name:28s} {q.reproduces}")
        out.append(f"{'':28s}   {q.title}")
        out += _param_lines(q, " " * 31)
    return out


def describe_lines(name_or_file: str) -> list[str]:
    """`actdb query NAME --describe`: title, what it reproduces, file, parameters with default and help."""
    q = find_query(name_or_file)
    out = [f"query        {q.name}", f"title        {q.title or '—'}", f"reproduces   {q.reproduces or '—'}",
           f"file         {q.path}"]
    note = ["  " + RECORDED_NOTE] if any(isinstance(v, Recorded) for v in q.params.values()) else []
    return out + ["parameters   (override with -p NAME VALUE)"] + _param_lines(q, "  ") + note
