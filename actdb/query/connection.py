"""Connections: a DuckDB database with a store's views, and read-only user SQL with bound parameters."""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Iterator, Mapping

from ..errors import CheckTimeout, InputError, QueryMemory, QueryTimeout, StoreError
from ..store.index_info import bound_index_info, index_path
from ..store.layout import INDEX_CAPTURE_DIR, INDEX_CAPTURE_LAYERS, INDEX_PROJECTION_FILE, index_file, rule_dir
from ..store.parquet_guard import parquet_guard
from .dependencies import created_name, files_read, view_dependencies, words


def connect(store, pre: bool = True, lazy: bool = True, threads: int | None = None, memory_mb: float | None = None):
    """An in-memory DuckDB connection for the views of `store` (an actdb.Store), confined to
    the store's own files and with its configuration locked. lazy: each view is created when a
    statement run through stream_sql first names it (binding all of them costs more than a
    one-line query, and proj_score's Python UDF makes DuckDB import numpy); else all now.
    threads: DuckDB's worker threads (default: one per core), fixed before the lock; memory_mb: a
    hard memory limit of its statements (see confine)."""
    stmts, absent = store_statements(store, pre)
    con = new_connection(threads)
    # which files each view reads, checked before each query
    guard = parquet_guard(store, fresh=True)
    store._view_deps = view_dependencies(stmts)   # what each view reads, for the checks of a statement
    confine(con, store.path, memory_mb)
    views = _LazyViews(con, store, stmts, guard, absent)
    if not lazy:
        views.ensure(_EVERY_VIEW)
    if not hasattr(store, "_lazy_views"):
        store._lazy_views = weakref.WeakKeyDictionary()   # connection -> its views
    store._lazy_views[con] = views
    return con


def new_connection(threads: int | None = None):
    """An in-memory DuckDB database, no progress bar; threads: its worker threads (default one per core)."""
    import duckdb

    con = duckdb.connect(":memory:")
    con.execute("SET enable_progress_bar = false")
    if threads is not None:
        con.execute("SET threads = $n", {"n": int(threads)})
    return con


def store_statements(store, pre: bool = True) -> tuple[list[str], dict[str, str]]:
    """The statements that create the views and macros of `store` under its fire rule, and the
    views it lacks {name: why} (views.py; pre: see views._views)."""
    from .views import _views, massive_views, neighbour_views, neighbours_macro, projection_views

    # the views read the handle's rule's index, and the rule-independent tables (massive
    # activations, vocabulary projection) from the index of the store's first rule
    base, shared = rule_dir(store.path, store.rule), rule_dir(store.path, store.rules[0])
    store.check_current()
    info = bound_index_info(store.path, base, store.manifest, store.rule)
    if info is None:
        what = "" if len(store.rules) == 1 else f" of rule {store.rule}"
        raise StoreError(f"{index_path(base)}: no index{what} (run `actdb index {store.path}`)")
    shared_info = info if shared == base else bound_index_info(store.path, shared, store.manifest, store.rules[0])
    stmts = _views(store.path, store.manifest, info, pre=pre, index_root=base, rule=store.rule)
    # views a store may lack, and why: a statement naming one is told that, not DuckDB's "does not exist"
    absent: dict[str, str] = {}
    # an index from before the massive-activation summaries: its macro reads the capture Parquet
    summaries = shared_info is not None and INDEX_CAPTURE_LAYERS in shared_info.files
    full = massive_views(shared, info)
    if not summaries:
        made = {created_name(v) for v in massive_views(shared, info, summaries=False)}
        absent.update(dict.fromkeys((created_name(v) for v in full if created_name(v) not in made),
                                    ABSENT_CAPTURE_LAYERS))
    for these, every, file, why in ((massive_views(shared, info, summaries), full, INDEX_CAPTURE_DIR, ABSENT_CAPTURE),
                                    (projection_views(shared, info), None, INDEX_PROJECTION_FILE, ABSENT_PROJECTION)):
        if shared_info is not None and index_file(shared, file).exists():
            stmts += these
        else:
            absent.update(dict.fromkeys((created_name(v) for v in every or these), why))
    stmts.append(neighbours_macro())   # co-firing: one neuron against all, from the masks
    if info.config.neighbours:
        stmts += neighbour_views(base)
    else:
        absent["neuron_neighbours"] = ABSENT_NEIGHBOURS
    return stmts, absent


ABSENT_CAPTURE = ("this store's index has no captured activations (record them with `actdb ingest --capture "
                  "resid`, the default)")
ABSENT_CAPTURE_LAYERS = ("this store's index predates its massive-activation summaries (capture_layers, massive_rows); "
                         "rebuild it with `actdb index STORE --force`")
ABSENT_PROJECTION = ("this store has no vocabulary projection (its model's output projection and unembedding, "
                     "projection.safetensors, were not recorded)")
ABSENT_NEIGHBOURS = ("this store's index has no co-firing table (build it with `actdb index STORE --neighbours 20`; "
                     "the table function neighbours(layer, neuron) needs none)")
_EVERY_VIEW = "SELECT * FROM duckdb_views()"   # a statement that names the catalogue makes every view
_NO_SUCH = re.compile(r"with name (\w+) does not exist", re.IGNORECASE)

# words through which a statement can reach any view by name (the catalogue, SQL in a string)
_CATALOGUE = {"information_schema", "pg_catalog", "sqlite_master", "show", "pragma", "query", "query_table"}


class _LazyViews:
    """The view and macro statements of one connection, each run the first time a statement
    names it (or a view that uses it); the creation order is kept, so dependencies come first."""

    def __init__(self, con, store, stmts: list[str], guard, absent: dict[str, str]) -> None:
        self.con = weakref.ref(con)   # the connection's entry in store._lazy_views must not keep it alive
        self.store, self.guard = store, guard
        self.stmts = stmts
        self.names = [created_name(s) for s in stmts]
        self.deps = {name: names for name, (_, names) in store._view_deps.items()}
        self.udf = {name for name, s in zip(self.names, stmts) if "proj_score(" in s}
        self.done: set[str] = set()
        self.proj_score = False
        self.cofire = "neighbours" in self.names   # its UDF: registered with the macro
        self.absent = absent   # view -> why this store lacks it

    def ensure(self, sql: str) -> None:
        named = words(sql)
        if named & _CATALOGUE or any(w.startswith("duckdb_") for w in named):
            want = set(self.deps)
        else:
            want, todo = set(), [w for w in named if w in self.deps]
            while todo:
                name = todo.pop()
                if name not in want:
                    want.add(name)
                    todo += self.deps[name]
        want -= self.done
        # proj_score exists where the store has a projection (some view uses it)
        if self.udf and not self.proj_score and (want & self.udf or "proj_score" in named):
            from .views import register_proj_score

            register_proj_score(self.con(), self.store)
            self.proj_score = True
        if self.cofire and "neighbours" in want:
            from .views import register_neighbours

            register_neighbours(self.con(), self.store)
            self.cofire = False
        for name, stmt in zip(self.names, self.stmts):
            if name in want:
                create(self.con(), self.guard, stmt, f"{self.store.path}: view {name}")
                self.done.add(name)


def create(con, guard, stmt: str, what: str) -> None:
    """Run one CREATE VIEW or MACRO; a failure names a damaged file where there is one (creating a
    view reads the Parquet footers), else `what`."""
    import duckdb

    try:
        con.execute(stmt)
    except duckdb.Error as e:
        guard.verify_all()
        raise StoreError(f"{what}: {_one_line(e)}") from None


def ensure_views(store, con, sql: str) -> None:
    """Create the views `sql` names on `con` (a connection from connect(store))."""
    views = getattr(store, "_lazy_views", {}).get(con)
    if views is not None:
        views.ensure(sql)


def frame(table, arrow: bool):
    """A pyarrow Table as asked for: itself, or a Polars DataFrame."""
    if arrow:
        return table
    import polars as pl

    return pl.from_arrow(table)


def ensure_all_views(store, con) -> None:
    """Create every view and macro of `store` on `con` now (its cursors see only those made)."""
    ensure_views(store, con, _EVERY_VIEW)


TEMP_PREFIX = "actdb-duckdb-"   # + the owning process's pid + "-" + a random part
_swept = False


def private_temp_dir() -> str:
    """A new folder of mode 0700 under the system's temporary folder, named after this process.
    A process that ends without running its finalizers (killed, os._exit) leaves its folders
    behind: the first call of each process removes those of processes that are gone."""
    global _swept
    if not _swept:
        _swept = True
        sweep_temp_dirs()
    return tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-")


def sweep_temp_dirs() -> list[Path]:
    """Remove this user's private DuckDB folders whose process has ended; the folders removed."""
    gone = []
    for d in Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*-*"):
        pid = d.name[len(TEMP_PREFIX):].split("-", 1)[0]
        try:
            if not pid.isdigit() or d.lstat().st_uid != os.getuid() or not d.is_dir() or d.is_symlink():
                continue
            os.kill(int(pid), 0)   # raises ProcessLookupError when the process is gone
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
            gone.append(d)
        except OSError:   # PermissionError: alive under another user; or the folder just went
            continue
    return gone


def confine(con, root: Path | list[Path], memory_mb: float | None = None) -> None:
    """Let SQL on `con` read only files under `root` (a store, or several: the views read the
    stores' files when a query runs, so the stores stay allowed): no other path, no URL, no
    extension, no writes, and no SET that would undo it. memory_mb: the most memory its statements
    may take, with no spilling to disk beyond it (a statement past it fails); None: DuckDB's
    default, spilling."""
    # DuckDB lets SQL read its temporary folder (by default .tmp/ in the current folder, whatever
    # the user keeps there): each connection gets a private one, removed when the connection goes
    tmp = private_temp_dir()
    weakref.finalize(con, shutil.rmtree, tmp, ignore_errors=True)
    con.execute("SET temp_directory = $t", {"t": tmp})
    if memory_mb is not None:
        con.execute("SET memory_limit = $m", {"m": f"{memory_mb:g}MiB"})
        con.execute("SET max_temp_directory_size = '0MiB'")
    roots = [root] if isinstance(root, (str, Path)) else root
    dirs = sorted({str(f(Path(r))).rstrip("/") + "/" for r in roots for f in (Path.absolute, Path.resolve)})
    con.execute("SET allowed_directories = $dirs", {"dirs": dirs})
    con.execute("SET enable_external_access = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET lock_configuration = true")


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


def _absent_view(msg: str, absent: dict[str, str]) -> str:
    """DuckDB's "... with name X does not exist" for a view this store lacks -> why it lacks it."""
    m = _NO_SUCH.search(msg) if "Catalog Error" in msg else None
    name = m.group(1).lower() if m else None
    return f"{name}: {absent[name]}" if name in absent else msg


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


def _bind(st, params: Mapping[str, Any] | None) -> dict[str, Any]:
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
    return params


_WAKE = b"\xff"  # not a signal number


class _Watchdog:
    """Interrupts the statement running on `con` once `seconds` have passed, or on Ctrl-C.

    DuckDB runs a statement in C with the main thread blocked, where a Python SIGINT handler
    cannot run until the statement ends; so, in the main thread, SIGINT is caught at C level
    (signal.set_wakeup_fd) and a helper thread interrupts the statement. Our handler only
    records the signal: the interrupt then surfaces once, as DuckDB's error, never as a stray
    KeyboardInterrupt in the middle of writing output. The helper keeps interrupting until the
    statement ends, since DuckDB drops an interrupt that arrives before its executor starts."""

    def __init__(self, con, seconds: float | None) -> None:
        self.con, self.seconds = con, seconds or None
        self.fired = self.user_interrupted = False
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._pipe: tuple[int, int] | None = None
        self._old: tuple[Any, int] | None = None

    def _on_sigint(self, signum, frame) -> None:
        self.user_interrupted = True
        self.con.interrupt()

    def _run(self) -> None:
        import select

        deadline = None if self.seconds is None else time.monotonic() + self.seconds
        while not self._done.is_set():
            if self._pipe is not None:
                ready, _, _ = select.select([self._pipe[0]], [], [], 0.05)
                # signal numbers, or _WAKE from __exit__
                if ready and os.read(self._pipe[0], 64).strip(_WAKE):
                    self.user_interrupted = True
            else:
                self._done.wait(0.05)
            if deadline is not None and time.monotonic() >= deadline and not self.user_interrupted:
                self.fired = True
            if self.fired or self.user_interrupted:
                self.con.interrupt()

    def __enter__(self) -> "_Watchdog":
        import signal

        catch = threading.current_thread() is threading.main_thread() \
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        if catch:
            r, w = self._pipe = os.pipe()
            os.set_blocking(w, False)
            self._old = (signal.signal(signal.SIGINT, self._on_sigint),
                         signal.set_wakeup_fd(w, warn_on_full_buffer=False))
        if catch or self.seconds:
            self._thread = threading.Thread(target=self._run, name="actdb-sql-watchdog", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        import signal

        self._done.set()
        if self._pipe is not None:
            os.write(self._pipe[1], _WAKE)
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._old is not None:
            signal.set_wakeup_fd(self._old[1])
            signal.signal(signal.SIGINT, self._old[0])
            self._old = None
        if self._pipe is not None:
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None


def _interrupted(e: BaseException) -> bool:
    """DuckDB reports an interrupt as InterruptException, as RuntimeError('Query interrupted')
    from a materialising fetch, or as an OSError through Arrow's stream reader."""
    return isinstance(e, KeyboardInterrupt) or "interrupt" in type(e).__name__.lower() \
        or "INTERRUPT" in str(e) or str(e) == "Query interrupted"


class Result:
    """A running statement's answer, read once: as Arrow record batches (iterate, `schema`,
    `read_all()`), or as Python rows (`fetch(n)`, `columns`) without loading Arrow, which
    the table format uses. Past its time limit, or on Ctrl-C, the statement is interrupted:
    QueryTimeout or KeyboardInterrupt. Close it (or use `with`) to stop early."""

    def __init__(self, con, sql: str, params: dict[str, Any], timeout: float | None, timeout_hint: str,
                 batch_rows: int, guard=None, absent: dict[str, str] | None = None,
                 seconds: float | None = None, store=None) -> None:
        """timeout: the statement's time limit as given (for the message); seconds: what is left
        of it once the file checks are done (default: all of it)."""
        self._con, self._sql, self._params, self._batch_rows = con, sql, params or None, batch_rows
        self._guard, self._absent, self._store = guard, absent or {}, store
        self._hint, self._timeout = timeout_hint, timeout
        self._reader = None
        self._executed = False
        self._dog = _Watchdog(con, timeout if seconds is None else seconds).__enter__()

    def _translate(self, e: BaseException) -> BaseException:
        import duckdb

        if self._dog.user_interrupted:
            return KeyboardInterrupt()
        if self._dog.fired and _interrupted(e):
            return QueryTimeout(f"query interrupted after {self._timeout:g} s ({self._hint})")
        if _interrupted(e):
            return KeyboardInterrupt()
        if isinstance(e, duckdb.OutOfMemoryException):
            return QueryMemory("query stopped: it needs more memory than the query engine may use")
        if isinstance(e, (duckdb.Error, OSError)):
            if self._store is not None:
                _raise_if_rebuilt(self._store)
            if self._guard is not None:
                self._guard.verify_all()   # a damaged file the statement reached anyway is named, not DuckDB's error
            msg = _one_line(e)
            if "Permission Error" in msg:  # enable_external_access = false, see confine()
                msg += " (SQL over a store reads only the store's own files)"
            return InputError(_absent_view(msg, self._absent))
        return e

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except (Exception, KeyboardInterrupt) as e:
            self.close()
            raise self._translate(e) from None

    def _arrow(self):
        if self._reader is None:
            if self._executed:
                raise RuntimeError("Result: rows already fetched as Python rows")
            rel = self._call(lambda: self._con.sql(self._sql, params=self._params))
            self._reader = self._call(rel.to_arrow_reader, self._batch_rows)
        return self._reader

    @property
    def schema(self):
        return self._arrow().schema

    def __iter__(self) -> Iterator:
        reader = self._arrow()
        try:
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    if self._dog.user_interrupted:  # Ctrl-C after the last batch was read
                        raise KeyboardInterrupt from None
                    return
                except (Exception, KeyboardInterrupt) as e:  # not GeneratorExit: a consumer stopping early
                    raise self._translate(e) from None
                yield batch
        finally:
            self.close()

    def read_all(self):
        """The whole answer as one pyarrow Table."""
        import pyarrow as pa

        schema = self.schema
        return pa.Table.from_batches(list(self), schema=schema)

    def _execute(self) -> None:
        if not self._executed:
            if self._reader is not None:
                raise RuntimeError("Result: rows already read as Arrow batches")
            self._call(self._con.execute, self._sql, self._params)
            self._executed = True

    @property
    def columns(self) -> list[tuple[str, str]]:
        """(name, DuckDB type) of each column."""
        self._execute()
        return [(d[0], str(d[1])) for d in self._con.description]

    def fetch(self, n: int) -> list[tuple]:
        """Up to n more rows as Python tuples ([] at the end)."""
        self._execute()
        rows = self._call(self._con.fetchmany, n)
        if not rows and self._dog.user_interrupted:
            raise KeyboardInterrupt
        return rows

    def close(self) -> None:
        self._dog.__exit__()
        if self._reader is not None:
            self._reader.close()

    def __enter__(self) -> "Result":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def stream_sql(store, sql: str, params: Mapping[str, Any] | None = None, con=None, timeout: float | None = None,
               timeout_hint: str = "timeout", batch_rows: int = 65536) -> Result:
    """Start one read-only statement with named parameters ($name) bound; its answer streams
    as Arrow record batches. timeout: seconds (None or 0: no limit); timeout_hint names the
    knob in the message (the CLI says --timeout)."""
    store.check_current()
    con = con or connect(store)
    ensure_views(store, con, sql)
    st = _check_read_only(con, sql)
    params = _bind(st, params)
    guard = parquet_guard(store)
    files = files_read(sql, getattr(store, "_view_deps", None) or {})
    left = check_files(store, guard, files, timeout, timeout_hint, f"`actdb check {store.path}` checks them")
    views = getattr(store, "_lazy_views", {}).get(con)
    return Result(con, sql, params, timeout, timeout_hint, batch_rows, guard, views.absent if views else None,
                  seconds=left, store=store)


def check_files(store, guard, files: set[str] | None, timeout: float | None, timeout_hint: str,
                check_all: str) -> float | None:
    """Check the Parquet files a statement reads (None: every file) against their records, within
    its time limit (DuckDB does not check Parquet page CRCs: the sha256 of each file read); returns
    the seconds of the limit left for the statement. check_all: the command that checks them all."""
    deadline = time.monotonic() + timeout if timeout else None
    try:
        guard.verify_all(deadline) if files is None else guard.verify(sorted(files), deadline)
    except CheckTimeout as e:
        raise QueryTimeout(f"query stopped after {timeout:g} s ({timeout_hint}) while checking the store's files "
                           f"against their records ({e.checked} checked; {check_all} all, without a limit)") from None
    except StoreError:
        _raise_if_rebuilt(store)
        raise
    return None if deadline is None else max(deadline - time.monotonic(), 1e-3)


def _raise_if_rebuilt(store) -> None:
    """A statement that failed because the index was swapped under it says so (the handle
    answers from the new index at its next statement)."""
    if getattr(store, "rebuilt", lambda: False)():
        raise StoreError(f"{getattr(store, 'where', store.path)}: the index was rebuilt while the statement ran; "
                         "run it again (it will answer from the new index)")


def run_sql(store, sql: str, params: Mapping[str, Any] | None = None, con=None, timeout: float | None = None,
            timeout_hint: str = "timeout"):
    """Run one read-only statement with named parameters ($name) bound; returns a pyarrow Table."""
    return stream_sql(store, sql, params, con, timeout, timeout_hint).read_all()
