"""Massive activations (Sun et al. 2024; docs/definitions.md): the magnitude capture of ingest
(capture.py, Zarr under STORE/capture/) flattened into Parquet for SQL, block by block.

index/capture/part-BBBBBB.parquet: kind ('resid' | 'ffn'), row, layer, rank (1 = largest |h|),
dim, value (signed), token_median_abs, median_abs (the whole sequence's median |h|).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..files import write_parquet
from ..store.layout import INDEX_CAPTURE_DIR, part_name


def build_capture_index(store, index_dir: Path) -> None:
    """index_dir/capture/part-BBBBBB.parquet from the capture of a store handle (a StoreReader, whose
    reads check every chunk against its record)."""
    manifest = store.manifest
    out = Path(index_dir) / INDEX_CAPTURE_DIR
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if not manifest.capture:
        write_parquet(_empty(), out / part_name(0))
        return
    n, bt = manifest.n_tokens, manifest.block_tokens
    layers = np.asarray(manifest.layers, dtype=np.int32)
    for b, lo in enumerate(range(0, n, bt)):
        hi = min(lo + bt, n)
        parts = []
        for kind in manifest.capture:
            v = store.capture(kind, "topk_value")[:, lo:hi]     # [layers, rows, k]
            d = store.capture(kind, "topk_dim")[:, lo:hi]
            med = store.capture(kind, "median")[:, lo:hi]       # [layers, rows]
            smed = store.capture(kind, "seq_median")[:, lo:hi]
            L, R, K = v.shape
            parts.append(pa.table({
                "kind": pa.array([kind] * (L * R * K)).dictionary_encode(),
                "row": np.broadcast_to(np.arange(lo, hi, dtype=np.int64)[None, :, None], v.shape).ravel(),
                "layer": np.broadcast_to(layers[:, None, None], v.shape).ravel(),
                "rank": np.broadcast_to(np.arange(1, K + 1, dtype=np.int8)[None, None], v.shape).ravel(),
                "dim": d.ravel(), "value": v.ravel(),
                "token_median_abs": np.repeat(med.ravel(), K),
                "median_abs": np.repeat(smed.ravel(), K)}))
        write_parquet(pa.concat_tables(parts), out / part_name(b))


def _empty() -> pa.Table:
    return pa.table({"kind": pa.array([], pa.string()).dictionary_encode(), "row": pa.array([], pa.int64()),
                     "layer": pa.array([], pa.int32()), "rank": pa.array([], pa.int8()),
                     "dim": pa.array([], pa.int32()), "value": pa.array([], pa.float32()),
                     "token_median_abs": pa.array([], pa.float32()), "median_abs": pa.array([], pa.float32())})
