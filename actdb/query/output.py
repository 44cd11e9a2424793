"""Output formats of query results: table, CSV, JSON, Parquet, written as the answer streams.

CSV, JSON and Parquet are written one record batch at a time, so an answer of any size
takes the memory of one batch; the table format keeps the first max_rows rows and counts
the rest. A file is written beside its name and renamed when complete (no torn file on
an error or Ctrl-C).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ..errors import ActdbError, InputError
from ..files import atomic_path
from ..store.layout import check_outside_stores

FORMATS = ("table", "csv", "json", "parquet")


def _batches(answer) -> Iterable:
    """A connection.Result streams its batches; a pyarrow Table is split into its own."""
    return answer.to_batches() if hasattr(answer, "to_batches") else answer


def _frames(answer) -> Iterator:
    import polars as pl

    for b in _batches(answer):
        if b.num_rows:
            yield pl.from_arrow(b)


def output_path(output: str) -> Path:
    """The file -o names: its folder is created (as `actdb plot` does); a folder, or a path inside
    a store, is refused."""
    check_outside_stores(output)
    p = Path(output)
    if p.is_dir():
        raise InputError(f"-o {output}: is a folder, expected a file name")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"-o {output}: cannot create its folder {p.parent} ({e.strerror or e})") from None
    if not os.access(p.parent, os.W_OK):
        raise InputError(f"-o {output}: folder {p.parent} is not writable")
    return p


@contextmanager
def _sink(output: str | None, echo: Callable[[str], None]) -> Iterator[Callable[[str], None]]:
    """A write(text) function: to stdout through echo, or to the file `output` (atomic)."""
    if not output:
        yield echo
        return
    with atomic_path(output_path(output)) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        yield f.write


def _csv(answer, write: Callable[[str], None]) -> None:
    import polars as pl

    header = True
    for df in _frames(answer):
        # CSV has no lists: list cells are written space-separated, as before streaming
        nested = [c for c, t in df.schema.items() if t.is_nested()]
        df = df.with_columns(pl.col(c).cast(pl.List(pl.String)).list.join(" ") for c in nested)
        write(df.write_csv(include_header=header))
        header = False
    if header:  # no rows: the header alone
        write(",".join(answer.schema.names) + "\n")


def _json(answer, write: Callable[[str], None]) -> None:
    """One JSON array of records (the format before streaming), written a batch at a time:
    each batch's array is written by Polars without its brackets."""
    write("[")
    sep = ""
    for df in _frames(answer):
        text = df.write_json()
        write(sep + text[1:-1])
        sep = ","
    write("]\n")


def _cell(v) -> str:
    text = "null" if v is None else str(v)
    text = text.replace("\n", "\\n")
    return text if len(text) <= _CELL else text[:_CELL - 1] + "…"


_CELL = 60


def _render(columns: list[tuple[str, str]], rows: list[tuple]) -> str:
    """A box table (names, types, rows), drawn here rather than by Polars: importing Polars
    costs more than a small query does (benchmarks/RESULTS.md)."""
    head = [[n for n, _ in columns], ["---"] * len(columns), [t.lower() for _, t in columns]]
    body = [[_cell(v) for v in r] for r in rows]
    widths = [max(len(x[i]) for x in head + body) for i in range(len(columns))]

    def line(cells: list[str]) -> str:
        return "│ " + " ┆ ".join(c.ljust(w) for c, w in zip(cells, widths)) + " │"

    def rule(left: str, mid: str, right: str, fill: str) -> str:
        return left + mid.join(fill * (w + 2) for w in widths) + right

    return "\n".join([rule("┌", "┬", "┐", "─"), *map(line, head), rule("╞", "╪", "╡", "═"),
                      *map(line, body), rule("└", "┴", "┘", "─")])


def _table(answer, write: Callable[[str], None], max_rows: int) -> None:
    if hasattr(answer, "to_batches"):  # a whole pyarrow Table
        columns = [(f.name, str(f.type)) for f in answer.schema]
        all_rows = [tuple(r.values()) for r in answer.to_pylist()]
        rows, left = all_rows[:max_rows], len(all_rows) - min(max_rows, len(all_rows))
    else:
        columns = answer.columns
        rows = answer.fetch(max_rows) if max_rows else []
        left = 0
        while chunk := answer.fetch(100_000):   # counted, not kept
            left += len(chunk)
    write(_render(columns, rows) + "\n")
    if left:
        write(f"… {left:,} more row{'s' if left != 1 else ''} left out ({len(rows):,} shown, --max-rows; "
              "-f csv/json/parquet write all)\n")


def check_output(fmt: str, output: str | None) -> None:
    """Refuse a format/output pair before the query starts, not after it ran."""
    if fmt not in FORMATS:
        raise InputError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "parquet" and not output:
        raise InputError("--format parquet: expected an output file (-o FILE), got none")
    if output:
        output_path(output)
    if fmt in ("csv", "json"):
        # Polars sets its own C-level SIGINT handler when first imported: imported while a
        # statement runs, it would replace the watchdog's (connection._Watchdog), and Ctrl-C
        # would then abort the process from inside Polars' CSV writer. Imported now, before
        # the statement starts, the watchdog's handler is installed after it and wins.
        import polars  # noqa: F401


def _parquet(answer, output: str) -> None:
    import pyarrow.parquet as pq

    with atomic_path(output_path(output)) as tmp:
        with pq.ParquetWriter(tmp, answer.schema) as w:
            for b in _batches(answer):
                w.write_batch(b)


def emit(answer, fmt: str, output: str | None, echo: Callable[[str], None], max_rows: int = 1000) -> None:
    """Write an answer (a streaming connection.Result or a pyarrow Table) as table, CSV, JSON
    (an array of records) or Parquet, to the file `output` or through echo(text)."""
    check_output(fmt, output)
    try:
        if fmt == "parquet":
            return _parquet(answer, output)
        with _sink(output, echo) as write:
            if fmt == "csv":
                _csv(answer, write)
            elif fmt == "json":
                _json(answer, write)
            else:
                _table(answer, write, max_rows)
    except ActdbError:   # a query cut off (QueryTimeout, also a TimeoutError) is not a write failure
        raise
    except OSError as e:
        if not output or isinstance(e, BrokenPipeError):   # stdout's errors are the CLI's to report
            raise
        # a full disk, no permission: the file and the reason (atomic_path removed the temporary)
        raise InputError(f"-o {output}: cannot write it ({e.strerror or ' '.join(str(e).split())})") from None
