"""Output formats of query results: table, CSV, JSON, Parquet."""
from __future__ import annotations

from pathlib import Path

from ..errors import InputError


def emit(table, fmt: str, output: str | None, echo) -> None:
    """Write a result as table, CSV, JSON (records) or Parquet, to a file or through echo."""
    import polars as pl

    if fmt == "parquet":
        if not output:
            raise InputError("--format parquet: expected an output file (-o FILE), got none")
        import pyarrow.parquet as pq

        pq.write_table(table, output)
        return
    df = pl.from_arrow(table)
    if fmt == "csv":
        nested = [c for c, t in df.schema.items() if t.is_nested()]
        text = df.with_columns(pl.col(c).cast(pl.List(pl.String)).list.join(" ") for c in nested).write_csv()
    elif fmt == "json":
        import json

        text = json.dumps(df.to_dicts(), default=str, ensure_ascii=False)
    else:
        with pl.Config(tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=60, tbl_hide_dataframe_shape=True):
            text = str(df)
    if output:
        Path(output).write_text(text + ("" if text.endswith("\n") else "\n"), encoding="utf-8")
    else:
        echo(text.rstrip("\n"))
