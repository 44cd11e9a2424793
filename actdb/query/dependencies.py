"""Which files a statement can read: the views and macros of a connection, what each reads
(read_parquet paths) and uses (other views), and the names a statement mentions. The file
checks (store/parquet_guard.py) then hash only those files; a statement that can reach files
or other SQL by name is checked against every file."""
from __future__ import annotations

import re
from typing import Iterable

# table functions through which SQL reaches files or other SQL by name: check every file
_REACH_ANYTHING = {"read_parquet", "parquet_scan", "query", "query_table", "parquet_metadata",
                   "parquet_file_metadata", "parquet_kv_metadata", "parquet_schema", "read_blob", "glob"}
SQL_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_READ_PARQUET = re.compile(r"read_parquet\(\s*'((?:[^']|'')*)'")
_CREATE = re.compile(r"\s*CREATE\s+(?:OR\s+REPLACE\s+)?(?:VIEW|MACRO)\s+([A-Za-z_][A-Za-z0-9_]*)", re.IGNORECASE)


def words(sql: str) -> set[str]:
    """The (lower-case) identifiers and keywords of a statement."""
    return {w.lower() for w in SQL_WORD.findall(sql)}


def created_name(stmt: str) -> str | None:
    """The (lower-case) name a CREATE VIEW / CREATE MACRO statement creates, else None."""
    m = _CREATE.match(stmt)
    return m.group(1).lower() if m else None


def view_dependencies(statements: Iterable[str]) -> dict[str, tuple[set[str], set[str]]]:
    """name -> (read_parquet paths, other names) of each view and macro the statements create."""
    bodies: dict[str, str] = {}
    for stmt in statements:
        m = _CREATE.match(stmt)
        if m is not None:
            name = m.group(1).lower()
            bodies[name] = bodies.get(name, "") + " " + stmt[m.end():]
    return {name: ({p.replace("''", "'") for p in _READ_PARQUET.findall(body)},
                   words(body) & set(bodies) - {name})
            for name, body in bodies.items()}


def files_read(sql: str, deps: dict[str, tuple[set[str], set[str]]]) -> set[str] | None:
    """The files (paths or globs) `sql` can read through the views and macros it names; None when
    it can reach any file (a table function that takes a path or SQL, a .parquet path) or when
    the views are not known."""
    named = words(sql)
    if not deps or named & _REACH_ANYTHING or ".parquet" in sql.lower():
        return None
    todo, seen, files = [w for w in named if w in deps], set(), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        patterns, names = deps[name]
        files |= patterns
        todo += names
    return files
