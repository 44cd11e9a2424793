"""Massive activations (Sun et al. 2024; docs/definitions.md): the magnitude capture of ingest
(capture.py, Zarr under STORE/capture/) flattened into Parquet for SQL, block by block, and two
small tables the saved queries read instead of scanning that Parquet (whose rows grow with tokens):

index/capture/part-BBBBBB.parquet: kind ('resid' | 'ffn'), row, layer, rank (1 = largest |h|),
dim, value (signed), token_median_abs, median_abs (the whole sequence's median |h|).
index/capture_layers.parquet: per kind and layer over the ranks <= TOP_RANKS of every row: top3 (the
three largest |value|), top1, median_abs (the median of median_abs), n_rows; exact.
index/massive.parquet: the capture rows that pass the recorded thresholds (|value| > abs_min and
>= ratio x median_abs, a hair looser so float rounding never drops one: the views filter again),
with the row's seq, pos and token_id.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..files import write_parquet
from ..store.layout import INDEX_CAPTURE_DIR, INDEX_CAPTURE_LAYERS, INDEX_MASSIVE, part_name, token_parts

TOP_RANKS = 3     # the ranks per row that capture_layers summarises (queries/massive_top_magnitudes.sql)
_SLACK = 1e-6     # massive.parquet keeps rows this much (relative) under the thresholds: a superset


def build_capture_index(store, index_dir: Path, abs_min: float, ratio: float) -> list[str]:
    """index_dir/capture/part-BBBBBB.parquet, capture_layers.parquet and massive.parquet from the
    capture of a store handle (a StoreReader, whose reads check every chunk against its record);
    returns the paths written, relative to index_dir. Memory: one block, the distinct sequence
    medians per kind and layer, and the massive rows."""
    manifest = store.manifest
    index_dir = Path(index_dir)
    out = index_dir / INDEX_CAPTURE_DIR
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if not manifest.capture:
        write_parquet(_empty(), out / part_name(0))
        write_parquet(_summary([]), index_dir / INDEX_CAPTURE_LAYERS)
        write_parquet(_massive_empty(), index_dir / INDEX_MASSIVE)
        return [f"{INDEX_CAPTURE_DIR}/{part_name(0)}", INDEX_CAPTURE_LAYERS, INDEX_MASSIVE]
    n, bt = manifest.n_tokens, manifest.block_tokens
    layers = np.asarray(manifest.layers, dtype=np.int32)
    summary = {(kind, i): _LayerSummary() for kind in manifest.capture for i in range(len(layers))}
    massive, written = [], []
    tparts = token_parts(store.path)
    for b, lo in enumerate(range(0, n, bt)):
        hi = min(lo + bt, n)
        parts, tok = [], None
        for kind in manifest.capture:
            v = store.capture(kind, "topk_value")[:, lo:hi]     # [layers, rows, k]
            d = store.capture(kind, "topk_dim")[:, lo:hi]
            med = store.capture(kind, "median")[:, lo:hi]       # [layers, rows]
            smed = store.capture(kind, "seq_median")[:, lo:hi]
            L, R, K = v.shape
            rows = np.broadcast_to(np.arange(lo, hi, dtype=np.int64)[None, :, None], v.shape)
            table = pa.table({
                "kind": pa.array([kind] * (L * R * K)).dictionary_encode(),
                "row": rows.ravel(),
                "layer": np.broadcast_to(layers[:, None, None], v.shape).ravel(),
                "rank": np.broadcast_to(np.arange(1, K + 1, dtype=np.int8)[None, None], v.shape).ravel(),
                "dim": d.ravel(), "value": v.ravel(),
                "token_median_abs": np.repeat(med.ravel(), K),
                "median_abs": np.repeat(smed.ravel(), K)})
            parts.append(table)
            for i in range(L):
                summary[(kind, i)].add(np.abs(v[i, :, :TOP_RANKS]), smed[i])
            a = np.abs(v.astype(np.float64))
            keep = (a > abs_min * (1 - _SLACK)) & (a >= ratio * smed[:, :, None].astype(np.float64) * (1 - _SLACK))
            if keep.any():
                if tok is None:   # this block's token part, read only where it has a massive row
                    store.verify_files([tparts[b]])
                    tok = pq.read_table(tparts[b], columns=["seq", "pos", "token_id"])
                hit = table.filter(pa.array(keep.ravel()))
                r = pa.array(hit.column("row").to_numpy() - lo)
                massive.append(hit.append_column("seq", tok.column("seq").take(r))
                               .append_column("pos", tok.column("pos").take(r))
                               .append_column("token_id", tok.column("token_id").take(r)))
        write_parquet(pa.concat_tables(parts), out / part_name(b))
        written.append(f"{INDEX_CAPTURE_DIR}/{part_name(b)}")
    write_parquet(_summary([(kind, int(layers[i]), s) for (kind, i), s in summary.items()]),
                  index_dir / INDEX_CAPTURE_LAYERS)
    m = pa.concat_tables(massive).cast(_massive_empty().schema) if massive else _massive_empty()
    write_parquet(m, index_dir / INDEX_MASSIVE)
    return written + [INDEX_CAPTURE_LAYERS, INDEX_MASSIVE]


class _LayerSummary:
    """The three largest |value| and the distinct sequence medians with their row counts of one
    kind and layer, merged block by block: a median over rows needs only those (a row's
    median_abs is its sequence's, so there are about as many distinct values as sequences)."""

    def __init__(self) -> None:
        self.top = np.empty(0, np.float32)
        self.values: list[np.ndarray] = []
        self.counts: list[np.ndarray] = []
        self.n_rows = 0

    def add(self, absval: np.ndarray, seq_median: np.ndarray) -> None:
        flat = np.concatenate([self.top, absval.ravel()])
        k = min(3, flat.size)
        self.top = np.sort(np.partition(flat, flat.size - k)[flat.size - k:])[::-1]
        u, c = np.unique(seq_median, return_counts=True)
        self.values.append(u)
        self.counts.append(c)
        if sum(len(x) for x in self.values) > 4 * len(u) + 1024:   # merge now and then: bounded by distinct values
            self._merge()
        self.n_rows += seq_median.size if absval.shape[-1] else 0

    def _merge(self) -> None:
        v, c = np.concatenate(self.values), np.concatenate(self.counts)
        u, inv = np.unique(v, return_inverse=True)
        self.values, self.counts = [u], [np.bincount(inv, weights=c, minlength=len(u)).astype(np.int64)]

    def median(self) -> float | None:
        """DuckDB's median of the rows' median_abs (each row counted once; counting it once per rank
        does not move a median): the middle value, or halfway between the middle two."""
        if not self.n_rows:
            return None
        self._merge()
        u, c = self.values[0], np.cumsum(self.counts[0])
        n = int(c[-1])
        lo = u[np.searchsorted(c, (n - 1) // 2, side="right")]
        hi = u[np.searchsorted(c, n // 2, side="right")]
        lo, hi = float(lo), float(hi)   # interpolated in double, then rounded to float as DuckDB does
        return float(np.float32(lo + (hi - lo) * 0.5))


def _summary(rows: list[tuple[str, int, _LayerSummary]]) -> pa.Table:
    rows = [r for r in rows if r[2].n_rows]
    return pa.table({"kind": pa.array([k for k, _, _ in rows], pa.string()),
                     "layer": pa.array([l for _, l, _ in rows], pa.int32()),
                     "top3": pa.array([s.top.tolist() for _, _, s in rows], pa.list_(pa.float32())),
                     "top1": pa.array([float(s.top[0]) for _, _, s in rows], pa.float32()),
                     "median_abs": pa.array([s.median() for _, _, s in rows], pa.float32()),
                     "n_rows": pa.array([s.n_rows for _, _, s in rows], pa.int64())})


def _empty() -> pa.Table:
    return pa.table({"kind": pa.array([], pa.string()).dictionary_encode(), "row": pa.array([], pa.int64()),
                     "layer": pa.array([], pa.int32()), "rank": pa.array([], pa.int8()),
                     "dim": pa.array([], pa.int32()), "value": pa.array([], pa.float32()),
                     "token_median_abs": pa.array([], pa.float32()), "median_abs": pa.array([], pa.float32())})


def _massive_empty() -> pa.Table:
    t = _empty()
    tok = pa.schema([("seq", pa.int64()), ("pos", pa.int32()), ("token_id", pa.int32())])
    for f in tok:
        t = t.append_column(f, pa.array([], f.type))
    return t
