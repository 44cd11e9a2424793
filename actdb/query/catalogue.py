"""The saved-query catalogue: the .sql files of queries/, each with a header naming what it
reproduces and its `-- param:`s."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import InputError
from .connection import coerce_param, run_sql

QUERIES_DIR = Path(__file__).resolve().parents[2] / "queries"


@dataclass(frozen=True)
class SavedQuery:
    name: str
    path: Path
    title: str
    reproduces: str
    params: dict[str, Any] = field(default_factory=dict)
    sql: str = ""


_PARAM = re.compile(r"^--\s*param:\s*(\w+)\s*=\s*(\S+)")


def parse_query_file(path: Path) -> SavedQuery:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"{path}: cannot read query file ({e.strerror})") from None
    title = reproduces = ""
    params: dict[str, Any] = {}
    for line in text.splitlines():
        if not line.startswith("--"):
            continue
        mp = _PARAM.match(line)
        if mp:
            params[mp.group(1)] = coerce_param(mp.group(2))
        elif line.lower().startswith("-- title:"):
            title = line.split(":", 1)[1].strip()
        elif line.lower().startswith("-- reproduces:"):
            reproduces = line.split(":", 1)[1].strip()
    return SavedQuery(Path(path).stem, Path(path), title, reproduces, params, text)


def saved_queries(folder: Path | None = None) -> list[SavedQuery]:
    folder = Path(folder) if folder else QUERIES_DIR
    return [parse_query_file(p) for p in sorted(folder.glob("*.sql"))]


def find_query(name_or_file: str) -> SavedQuery:
    p = Path(name_or_file)
    if p.suffix == ".sql" and p.exists():
        return parse_query_file(p)
    cand = QUERIES_DIR / f"{name_or_file}.sql"
    if cand.exists():
        return parse_query_file(cand)
    names = ", ".join(q.name for q in saved_queries())
    raise InputError(f"query: expected a file or one of {names}, got {name_or_file!r}")


def run_saved(store, name_or_file: str, params: Mapping[str, Any] | None = None, con=None):
    q = find_query(name_or_file)
    given = dict(params or {})
    unknown = sorted(set(given) - set(q.params))
    if unknown:
        raise InputError(f"parameters: {', '.join(unknown)} unknown to query {q.name} "
                         f"(it takes {', '.join(q.params) or 'none'})")
    return run_sql(store, q.sql, {**q.params, **given}, con=con)


def list_lines() -> list[str]:
    out = []
    for q in saved_queries():
        ps = " ".join(f"${k}={v}" for k, v in q.params.items())
        out.append(f"{q.name:28s} {q.reproduces}")
        out.append(f"{'':28s}   {q.title}" + (f"  [{ps}]" if ps else ""))
    return out
