"""The saved-query catalogue: the .sql files of queries/, each with a header naming what it
reproduces and its `-- param: name = default  help` lines."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import InputError
from .connection import coerce_param, run_sql, stream_sql
from ..grammar import RULE_PARAM

RULE_LINE = f"${RULE_PARAM} = (the store's first)  fire rule whose masks the views count (one the store recorded)"


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
class SavedQuery:
    name: str
    path: Path
    title: str
    reproduces: str
    params: dict[str, Any] = field(default_factory=dict)
    sql: str = ""
    param_help: dict[str, str] = field(default_factory=dict)


_PARAM = re.compile(r"^--\s*param:\s*(\w+)\s*=\s*(\S+)\s*(.*)$")


def parse_query_file(path: Path) -> SavedQuery:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"{path}: cannot read query file ({e.strerror})") from None
    title = reproduces = ""
    params: dict[str, Any] = {}
    helps: dict[str, str] = {}
    for line in text.splitlines():
        if not line.startswith("--"):
            continue
        mp = _PARAM.match(line)
        if mp:
            params[mp.group(1)] = coerce_param(mp.group(2))
            helps[mp.group(1)] = mp.group(3).strip()
        elif line.lower().startswith("-- title:"):
            title = line.split(":", 1)[1].strip()
        elif line.lower().startswith("-- reproduces:"):
            reproduces = line.split(":", 1)[1].strip()
    return SavedQuery(Path(path).stem, Path(path), title, reproduces, params, text, helps)


def saved_queries(folder: Path | None = None) -> list[SavedQuery]:
    folder = Path(folder) if folder else QUERIES_DIR
    return [parse_query_file(p) for p in sorted(folder.glob("*.sql"))]


def find_query(name_or_file: str) -> SavedQuery:
    """A saved query by name, or a .sql file (a name with a .sql suffix or a folder in it is a file)."""
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


def _merged(q: SavedQuery, params: Mapping[str, Any] | None) -> dict[str, Any]:
    given = dict(params or {})
    unknown = sorted(set(given) - set(q.params) - {RULE_PARAM})   # every query takes the rule
    if unknown:
        raise InputError(f"parameters: {', '.join(unknown)} unknown to query {q.name} "
                         f"(it takes {', '.join(q.params) or 'none'})")
    return {**q.params, **given}


def run_saved(store, name_or_file: str, params: Mapping[str, Any] | None = None, con=None,
              timeout: float | None = None):
    """A saved query's whole answer as a pyarrow Table (header defaults, overridden by params)."""
    q = find_query(name_or_file)
    return run_sql(store, q.sql, _merged(q, params), con=con, timeout=timeout)


def stream_saved(store, name_or_file: str, params: Mapping[str, Any] | None = None, con=None,
                 timeout: float | None = None, timeout_hint: str = "timeout"):
    """A saved query's answer as a stream of record batches (connection.Result)."""
    q = find_query(name_or_file)
    return stream_sql(store, q.sql, _merged(q, params), con=con, timeout=timeout, timeout_hint=timeout_hint)


def _param_lines(q: SavedQuery, indent: str) -> list[str]:
    width = max((len(f"${k} = {v}") for k, v in q.params.items()), default=0)
    return [f"{indent}{f'${k} = {v}':{width}s}  {q.param_help.get(k, '')}".rstrip()
            for k, v in q.params.items()] + [indent + RULE_LINE]


def list_lines() -> list[str]:
    """`actdb query --list`: each query, what it reproduces, its title and its parameters."""
    out = []
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
    return out + ["parameters   (override with -p NAME VALUE)"] + _param_lines(q, "  ")
