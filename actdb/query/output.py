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

from ..errors import InputError
from ..io import atomic_path

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
    """The file -o names: its folder is created (as `actdb plot` does); a folder is refused."""
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


def _table(answer, write: Callable[[str], None], max_rows: int) -> None:
    import polars as pl

    kept, n_kept, left = [], 0, 0
    for df in _frames(answer):
        take = min(df.height, max_rows - n_kept)
        if take:
            kept.append(df.head(take))
            n_kept += take
        left += df.height - take
    df = pl.concat(kept) if kept else pl.from_arrow(answer.schema.empty_table())
    with pl.Config(tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=60, tbl_hide_dataframe_shape=True):
        text = str(df)
    write(text.rstrip("\n") + "\n")
    if left:
        write(f"… {left:,} more row{'s' if left != 1 else ''} left out ({n_kept:,} shown, --max-rows; "
              "-f csv/json/parquet write all)\n")


def check_output(fmt: str, output: str | None) -> None:
    """Refuse a format/output pair before the query starts, not after it ran."""
    if fmt not in FORMATS:
        raise InputError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "parquet" and not output:
        raise InputError("--format parquet: expected an output file (-o FILE), got none")
    if output:
        output_path(output)


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
    if fmt == "parquet":
        return _parquet(answer, output)
    with _sink(output, echo) as write:
        if fmt == "csv":
            _csv(answer, write)
        elif fmt == "json":
            _json(answer, write)
        else:
            _table(answer, write, max_rows)
