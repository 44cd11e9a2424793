"""Several stores in one session: `actdb.open([A, B])`, `actdb sql A B "..."`, `actdb query A B NAME`.

Each store's views and macros live under a schema of its own, named after the store's folder or
given as NAME=PATH (`smollm2.layer_stats`, `minilm.token_detectors_at(max_cov := 3)`). Every view
and table macro is also there unqualified, as the union over the stores, led by the columns
`store` (the schema's name), `model`, `n_layers` and, for a view with a layer, `depth` =
layer / (n_layers - 1), so that the layers of models of different depth line up; depth is NULL
where the layer is (a total row) and for a model of one layer. A union macro's thresholds default
to NULL, which stands for each store's own recorded threshold. A view that some stores lack (no
capture, no projection) is the union over the others.

One DuckDB database holds every schema, confined to the stores' folders; each store's Parquet guard
checks that store's files, and a statement checks only the files of the stores it reads (a
schema's views, or a union's). Why qualify the macros' SQL: DuckDB binds a view's names in its own
schema, but a macro's in the caller's, so a store's macros must name their store's views.

A saved query marked `-- across:` reads the unions; any other saved query runs on each store in
turn, its answer led by the same columns (docs/query.md).
"""
from __future__ import annotations

import functools
import os
import re
import threading
import weakref
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..errors import InputError
from ..store.parquet_guard import _norm, parquet_guard
from .connection import (Result, _bind, _check_read_only, check_files, confine, create, frame, new_connection,
                         store_statements)
from .dependencies import _REACH_ANYTHING, created_name, view_dependencies, words
from .views import NEIGHBOURS_UDF, _lit

LEAD = ("store", "model", "n_layers", "depth")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_OWN = {"main", "memory", "temp", "system", "information_schema", "pg_catalog"}   # DuckDB's own schemas
_CATALOGUE = {"information_schema", "pg_catalog", "sqlite_master", "show", "pragma", "query", "query_table"}
_CREATE = re.compile(r"\s*CREATE\s+(?:OR\s+REPLACE\s+)?(VIEW|MACRO)\s+([A-Za-z_][A-Za-z0-9_]*)", re.IGNORECASE)
_TABLE_MACRO = re.compile(r"\s*CREATE\s+MACRO\s+\w+\s*\((.*?)\)\s*AS\s+TABLE\b", re.IGNORECASE | re.DOTALL)
_STRING = re.compile(r"('(?:[^']|'')*')")
_QUALIFIED = re.compile(r'"?([A-Za-z_]\w*)"?\s*\.\s*"?([A-Za-z_]\w*)"?')
PROJ_SCORE = "proj_score"


# ---------------------------------------------------------------- names

def model_name(manifest) -> str:
    """The model as a label: a local model folder's name, else the hub id."""
    m = manifest.model
    return Path(m).name if Path(m).exists() or m.startswith(("/", ".")) else m


def folder_name(path: str | Path) -> str:
    """A store's schema name from its folder (see ident)."""
    return ident(Path(path).resolve().name)


def ident(text: str) -> str:
    """`text` as a name SQL can give a schema: every character other than a letter, digit or _
    becomes _, and a name that would start with a digit starts with _."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", text)
    return name if _IDENT.match(name) else "_" + name


def parse_spec(spec: str | Path) -> tuple[str | None, Path]:
    """`NAME=PATH` -> (NAME, PATH); a path (one that exists is a path even with an = in it) -> (None, PATH)."""
    text = str(spec)
    name, eq, rest = text.partition("=")
    if eq and re.match(r"[A-Za-z_]\w*\Z", name) and not Path(text).exists():
        return name, Path(rest)
    return None, Path(text)


@functools.lru_cache(maxsize=1)
def _reserved_words() -> frozenset[str]:
    import duckdb

    con = duckdb.connect(":memory:")
    try:
        return frozenset(r[0].lower() for r in con.execute(
            "SELECT keyword_name FROM duckdb_keywords() WHERE keyword_category = 'reserved'").fetchall())
    finally:
        con.close()


def check_names(pairs: Iterable[tuple[str, Any]]) -> None:
    """Refuse, in one line, a store name SQL cannot use as a schema, or one given to two stores."""
    seen: dict[str, Any] = {}
    for name, path in pairs:
        if not _IDENT.match(name):
            raise InputError(f"store name {name!r} ({path}): expected letters, digits and _ (not a digit first), "
                             "the name of its schema; give it one with NAME=PATH")
        if name.lower() in _OWN or name.lower() in _reserved_words():
            raise InputError(f"store name {name} ({path}): a name DuckDB keeps for itself; give the store another "
                             "with NAME=PATH")
        if name.lower() in seen:
            raise InputError(f"store name {name}: given to two stores ({seen[name.lower()]} and {path}); "
                             "name them apart with NAME=PATH")
        seen[name.lower()] = path


def lead_columns(name: str, store, has_layer: bool) -> str:
    """SQL of the leading columns of `store`'s rows under the name `name`: store, model, n_layers,
    and, with a layer column, depth = layer / (n_layers - 1) (NULL for a model of one layer)."""
    n = int(store.manifest.n_layers)
    cols = [f"{_lit(name)}::VARCHAR AS store", f"{_lit(model_name(store.manifest))}::VARCHAR AS model",
            f"{n}::INTEGER AS n_layers"]
    if has_layer:
        cols.append(f"layer::DOUBLE / {n - 1} AS depth" if n > 1 else "NULL::DOUBLE AS depth")
    return ", ".join(cols)


# ---------------------------------------------------------------- the SQL of each store

def qualify(stmts: list[str], schema: str, extra: Iterable[str] = (PROJ_SCORE,)) -> list[str]:
    """The statements with every view and macro they create, and name after FROM/JOIN or call,
    under `schema` (outside string literals)."""
    names = {created_name(s) for s in stmts} - {None} | set(extra)
    alt = "|".join(sorted(map(re.escape, names), key=len, reverse=True))
    table = re.compile(rf"\b((?:FROM|JOIN)\s+)({alt})\b(?![\w.])", re.IGNORECASE)
    call = re.compile(rf"(?<![\w.])({alt})(\s*\()", re.IGNORECASE)

    def code(text: str) -> str:
        return call.sub(rf"{schema}.\1\2", table.sub(rf"\1{schema}.\2", text))

    out = []
    for s in stmts:
        m = _CREATE.match(s)
        if m is not None:
            s = s[:m.start(2)] + schema + "." + s[m.start(2):]
        pieces = _STRING.split(s)   # odd pieces: string literals, left as they are
        out.append("".join(code(p) if i % 2 == 0 else p for i, p in enumerate(pieces)))
    return out


def _macro_params(stmt: str) -> list[tuple[str, str | None]]:
    """(name, default SQL, or None for a positional parameter) of a table macro's CREATE statement."""
    m = _TABLE_MACRO.match(stmt)
    out = []
    for part in filter(str.strip, m.group(1).split(",")) if m else ():
        name, _, default = part.partition(":=")
        out.append((name.strip(), default.strip() or None))
    return out


class _Guards:
    """The Parquet guards of several stores: each file is checked by the guard of the store it lies in."""

    def __init__(self, guards: Iterable) -> None:
        self.guards = sorted(guards, key=lambda g: -len(str(g.root)))   # a store inside another: the inner one

    def verify(self, paths: Iterable[str], deadline: float | None = None) -> None:
        for p in paths:
            path = _norm(p)
            for g in self.guards:
                root = _norm(g.root)
                if path == root or path.startswith(root + os.sep):
                    g.verify([p], deadline)
                    break

    def verify_all(self, deadline: float | None = None) -> None:
        for g in self.guards:
            g.verify_all(deadline)


class _Views:
    """The views and macros of several stores on one connection, each made the first time a
    statement names it: a store's under its schema, in its creation order; a union after the
    stores' own (its SQL needs their columns)."""

    def __init__(self, con, stores: "Stores", per: list[tuple[str, Any, list[str], dict[str, str]]]) -> None:
        self.con = weakref.ref(con)
        self.stores = stores.handles
        self.guard = _Guards(parquet_guard(st, fresh=True) for _, st, _, _ in per)
        self.schemas = {name.lower(): name for name, _, _, _ in per}
        self.stmts: list[tuple[str, str]] = []       # (key, statement): "schema.name" keys, dependencies first
        self.deps: dict[str, set[str]] = {}
        self.files: dict[str, set[str]] = {}
        self.having: dict[str, list[str]] = {}       # union name -> the schemas that have it
        self.kind: dict[str, str] = {}               # union name -> VIEW or MACRO
        self.params: dict[str, list[tuple[str, str | None]]] = {}   # "schema.name" of a table macro -> parameters
        self.udf: dict[str, tuple[str, Any]] = {}    # "schema.proj_score" -> (its UDF's name, the store)
        self.cofire: dict[str, tuple[str, Any]] = {}  # "schema.neighbours" -> (its UDF's name, the store)
        self.done: set[str] = set()
        lacking: dict[str, list[str]] = {}
        for name, st, stmts, absent in per:
            if any(f"{PROJ_SCORE}(" in s for s in stmts):
                # the store's proj_score: a macro over a Python UDF of its own, registered when first used
                key, udf = f"{name}.{PROJ_SCORE}", f"_actdb_proj_score_{name}"
                self.udf[key] = (udf, st)
                self.stmts.append((key, f"CREATE MACRO {name}.{PROJ_SCORE}(layer, neuron, token_id) AS "
                                        f"{udf}(layer, neuron, token_id)"))
                self.deps[key], self.files[key] = set(), set()
            deps = view_dependencies(stmts)
            for raw, stmt in zip(stmts, qualify(stmts, name)):
                obj = created_name(raw)
                key = f"{name}.{obj}"
                if f"{NEIGHBOURS_UDF}(" in stmt:   # neighbours(...): over a Python UDF of the store's own
                    udf = f"{NEIGHBOURS_UDF}_{name}"
                    stmt = stmt.replace(f"{NEIGHBOURS_UDF}(", f"{udf}(")
                    self.cofire[key] = (udf, st)
                paths, uses = deps[obj]
                self.stmts.append((key, stmt))
                self.files[key] = paths
                self.deps[key] = {f"{name}.{u}" for u in uses} | ({f"{name}.{PROJ_SCORE}"} if f"{PROJ_SCORE}(" in raw
                                                                  else set())
                kind = _CREATE.match(raw).group(1).upper()
                if not obj.startswith("_") and (kind == "VIEW" or _TABLE_MACRO.match(raw)):
                    self.having.setdefault(obj, []).append(name)
                    self.kind[obj] = kind
                    if kind == "MACRO":
                        self.params[key] = _macro_params(raw)
            for v, why in absent.items():
                lacking.setdefault(v, []).append(f"store {name}: {why}")
        for obj, schemas in self.having.items():
            self.deps[obj] = {f"{s}.{obj}" for s in schemas}
        self.absent = {v: "; ".join(whys) for v, whys in lacking.items()}

    # ------------------------------------------------------------ which objects a statement names

    def _named(self, sql: str) -> set[str]:
        """The keys a statement names: `schema.name` for a store's own, a bare name for a union."""
        keys: set[str] = set()

        def take(m: re.Match) -> str:
            schema = self.schemas.get(m.group(1).lower())
            if schema is None:
                return m.group(0)
            keys.add(f"{schema}.{m.group(2).lower()}")
            return " "
        rest = _QUALIFIED.sub(take, sql)
        return {k for k in keys if k in self.deps} | (words(rest) & self.having.keys())

    def _closure(self, keys: set[str]) -> set[str]:
        out, todo = set(), list(keys)
        while todo:
            key = todo.pop()
            if key not in out:
                out.add(key)
                todo += self.deps.get(key, ())
        return out

    def files_read(self, sql: str) -> set[str] | None:
        """The files a statement can read (read_parquet paths and globs of the stores it reads);
        None when it can reach any file by name."""
        if words(sql) & _REACH_ANYTHING or ".parquet" in sql.lower():
            return None
        return set().union(*(self.files.get(k, ()) for k in self._closure(self._named(sql))))

    # ------------------------------------------------------------ making them

    def ensure(self, sql: str) -> None:
        named = words(sql)
        if named & _CATALOGUE or any(w.startswith("duckdb_") for w in named):
            want = set(self.deps)
        else:
            want = self._closure(self._named(sql))
        want -= self.done
        if not want:
            return
        for key, stmt in self.stmts:
            if key in want:
                if key in self.udf:
                    from .views import register_proj_score

                    register_proj_score(self.con(), self.udf[key][1], self.udf[key][0])
                if key in self.cofire:
                    from .views import register_neighbours

                    register_neighbours(self.con(), self.cofire[key][1], self.cofire[key][0])
                self._run(key, stmt)
        for obj in self.having:
            if obj in want:
                self._run(obj, self._union(obj))

    def _run(self, key: str, stmt: str) -> None:
        create(self.con(), self.guard, stmt, f"view {key}")
        self.done.add(key)

    def _union(self, obj: str) -> str:
        """CREATE VIEW/MACRO main.OBJ: the union over the stores that have it, led by LEAD. A table
        macro takes the stores' parameters, each NULL by default: the store's own default."""
        parts = []
        sig: list[str] = []
        for s in self.having[obj]:
            if self.kind[obj] == "VIEW":
                src = probe = f"{s}.{obj}"
            else:
                params = self.params[f"{s}.{obj}"]
                sig = sig or [p if d is None else f"{p} := NULL" for p, d in params]
                src = f"{s}.{obj}(" + ", ".join(f'"{p}"' if d is None else f'{p} := coalesce("{p}", {d})'
                                                for p, d in params) + ")"
                probe = f"{s}.{obj}(" + ", ".join("NULL" for p, d in params if d is None) + ")"
            cols = self.con().sql(f"SELECT * FROM {probe}").columns
            parts.append(f"SELECT {lead_columns(s, self.stores[s], 'layer' in cols)}, * FROM {src}")
        body = " UNION ALL BY NAME ".join(parts)
        if self.kind[obj] == "VIEW":
            return f"CREATE VIEW main.{obj} AS {body}"
        return f"CREATE MACRO main.{obj}({', '.join(sig)}) AS TABLE {body}"


def connect_stores(h: "Stores", threads: int | None = None, memory_mb: float | None = None):
    """An in-memory DuckDB connection with the views of every store of `h` (each under its schema,
    and their unions), confined to the stores' folders; returns (connection, its _Views)."""
    per = []
    for name, st in h.handles.items():
        stmts, absent = store_statements(st)
        per.append((name, st, stmts, absent))
    con = new_connection(threads)
    for name in h.handles:
        con.execute(f"CREATE SCHEMA {name}")
    views = _Views(con, h, per)
    confine(con, [st.path for st in h.handles.values()], memory_mb)
    return con, views


# ---------------------------------------------------------------- the handle

class _Whole:
    """A whole answer (a pyarrow Table) where a streaming Result is expected: `with` gives the table."""

    def __init__(self, table) -> None:
        self.table = table

    def __enter__(self):
        return self.table

    def __exit__(self, *exc) -> None:
        pass

    def read_all(self):
        return self.table


class Stores:
    """Read-only handle on several stores, each under one fire rule, queried together (module
    docstring). `handles`: {schema name: actdb.Store}. One statement at a time: a thread of its
    own takes a handle of its own."""

    several = True
    generation = 0   # how many times the handle reconnected to a rebuilt index

    def __init__(self, handles: Mapping[str, Any]) -> None:
        pairs = list(handles.items())
        if not pairs:
            raise InputError("stores: expected at least one store, got none")
        check_names((n, st.path) for n, st in pairs)
        self.handles: dict[str, Any] = dict(pairs)
        self._lock = threading.RLock()
        self._con = self._key = self._views = self._names = None
        self._rule_handles: dict[str, Stores] = {}

    def __repr__(self) -> str:
        return "Stores(" + ", ".join(f"{n}={st.path}" for n, st in self.handles.items()) + ")"

    def __len__(self) -> int:
        return len(self.handles)

    def __getitem__(self, name: str):
        return self.handles[name]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.handles)

    @property
    def where(self) -> str:
        """The stores' folders, for messages."""
        return ", ".join(str(st.path) for st in self.handles.values())

    def with_rule(self, rule: str | None) -> "Stores":
        """The same stores, each under fire rule `rule` (a store that did not record it is named)."""
        if rule is None:
            return self
        if str(rule) not in self._rule_handles:
            out = {}
            for name, st in self.handles.items():
                try:
                    out[name] = st.with_rule(rule)
                except InputError as e:
                    raise InputError(f"store {name} ({st.path}): {e}") from None
            self._rule_handles[str(rule)] = Stores(out)
        return self._rule_handles[str(rule)]

    def _ruled(self, params: dict[str, Any] | None) -> tuple["Stores", dict[str, Any] | None]:
        from ..grammar import RULE_PARAM

        if not params or RULE_PARAM not in params:
            return self, params
        rest = dict(params)
        return self.with_rule(rest.pop(RULE_PARAM)), rest

    # ------------------------------------------------------------ the connection

    def check_current(self) -> None:
        for st in self.handles.values():
            st.check_current()

    def _index_key(self) -> tuple:
        return tuple(st._index_key() for st in self.handles.values())

    def rebuilt(self) -> bool:
        """Whether a store's index was swapped since the connection was made."""
        return self._index_key() != self._key

    def refresh(self) -> int:
        """Follow a rebuilt index now (see _db) and return the generation: a caller keeping what it
        read (the explorer's comparison) forgets it when this changes."""
        self._db()
        return self.generation

    def _db(self):
        """The connection, made again (views, records and all) when a store's index was rebuilt."""
        with self._lock:
            key = self._index_key()
            if self._con is not None and key != self._key:
                self.check_current()   # a store written again is an error, not a reconnect
                self._con.close()
                self._con = self._names = None
                self.generation += 1
            if self._con is None:
                first = next(iter(self.handles.values()))   # a console's handle: its limits
                self._con, self._views = connect_stores(self, getattr(first, "threads", None),
                                                        getattr(first, "memory_mb", None))
                self._key = key
            return self._con

    # ------------------------------------------------------------ statements

    def sql(self, query: str, params: dict[str, Any] | None = None, arrow: bool = False,
            timeout: float | None = None):
        """One read-only statement over the stores' views (see actdb.query); Polars (Arrow with arrow=True)."""
        return frame(self.stream(query, params, timeout).read_all(), arrow)

    def query(self, name_or_file, params: dict[str, Any] | None = None, arrow: bool = False,
              timeout: float | None = None):
        """A saved query (module docstring: over the unions, or on each store in turn)."""
        return frame(self.stream(name_or_file, params, timeout, saved=True).read_all(), arrow)

    def stream(self, query, params: dict[str, Any] | None = None, timeout: float | None = None,
               timeout_hint: str = "timeout", saved: bool = False):
        """Start a statement (a saved query with saved=True): a connection.Result of Arrow record
        batches, or the whole answer of a one-store saved query run on each store."""
        from .catalogue import find_query, parameters

        h, params = self._ruled(params)
        if saved:
            q = find_query(query)
            if not q.across:
                return _Whole(h._each(q, params, timeout, timeout_hint))
            query, params = q.sql, parameters(h, q, params)
        return h._stream(query, params, timeout, timeout_hint)

    def _stream(self, sql: str, params, timeout: float | None, timeout_hint: str, batch_rows: int = 65536) -> Result:
        self.check_current()
        with self._lock:
            con = self._db()
            views = self._views
            views.ensure(sql)
        st = _check_read_only(con, sql)
        params = _bind(st, params)
        checks = " and ".join(f"`actdb check {s.path}`" for s in self.handles.values())
        left = check_files(self, views.guard, views.files_read(sql), timeout, timeout_hint, f"{checks} check them")
        return Result(con, sql, params, timeout, timeout_hint, batch_rows, views.guard, views.absent,
                      seconds=left, store=self)

    def _each(self, q, params, timeout: float | None, timeout_hint: str):
        """A one-store saved query run on each store (each under the time limit), its rows led by LEAD."""
        import duckdb
        import pyarrow as pa

        tables = [(name, st, st.stream(q, params, timeout=timeout, timeout_hint=timeout_hint, saved=True).read_all())
                  for name, st in self.handles.items()]
        con = duckdb.connect(":memory:")
        try:
            out = []
            for name, st, t in tables:
                con.register("answer", t)
                # a column of the answer named like a leading one (massive_sites' n_layers) gets _1, as DuckDB names it
                clash = ", ".join(f"{c} AS {c}_1" for c in t.column_names if c in LEAD)
                star = f"* RENAME ({clash})" if clash else "*"
                out.append(con.sql(f"SELECT {lead_columns(name, st, 'layer' in t.column_names)}, {star} FROM answer")
                           .to_arrow_table())
                con.unregister("answer")
        finally:
            con.close()
        return pa.concat_tables(out, promote_options="permissive")

    def views(self) -> set[str]:
        """The union views (every store's, under its schema too)."""
        self._db()
        if self._names is None:
            self._names = set(self.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal AND "
                                       "schema_name = 'main'")["view_name"].to_list())
        return self._names


def open_stores(specs: Iterable[str | Path] | Mapping[str, str | Path], opener, rule: str | None = None) -> Stores:
    """Several stores read-only: paths (a schema named after each folder), `NAME=PATH` strings, or
    {name: path}, each opened by opener(path, rule=rule) (query.handle.Store); rule: the fire rule of
    every store (each must have recorded it)."""
    if isinstance(specs, Mapping):
        pairs = [(str(n), Path(p)) for n, p in specs.items()]
    else:
        pairs = [(n or folder_name(p), p) for n, p in map(parse_spec, specs)]
    if not pairs:
        raise InputError("stores: expected at least one store, got none")
    check_names(pairs)   # before anything is opened
    handles = {}
    for name, path in pairs:
        try:
            handles[name] = opener(path, rule=rule)
        except InputError as e:
            raise InputError(f"store {name} ({path}): {e}") from None
    return Stores(handles)


def named(handles: list, names: list[str] | None = None) -> Stores:
    """Store handles (one per store and rule) as a Stores, each named after its folder and, for a
    rule other than the store's first, the rule, or after `names`, as SQL can name a schema and made
    unique with _2, _3 …: the report's and the explorer's, which name their stores themselves."""
    out: dict[str, Any] = {}
    for i, st in enumerate(handles):
        base = ident(names[i]) if names else folder_name(st.path)
        if not names and st.rule != st.rules[0]:
            base += "_" + ident(st.rule)
        if base.lower() in _OWN or base.lower() in _reserved_words():
            base += "_store"
        name, k = base, 2
        while name.lower() in {n.lower() for n in out}:
            name, k = f"{base}_{k}", k + 1
        out[name] = st
    return Stores(out)


_ALONE: "weakref.WeakKeyDictionary[Any, Stores]" = weakref.WeakKeyDictionary()


def alone(store) -> Stores:
    """One store as a Stores of one (the saved queries across models read the unions), kept per
    handle: each thread's handle gets its own."""
    h = _ALONE.get(store)
    if h is None:
        h = _ALONE[store] = named([store])
    return h


def several(store) -> bool:
    """Whether `store` is a handle on several stores (Stores) rather than one."""
    return getattr(store, "several", False)
