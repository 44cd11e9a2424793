"""Per-neuron thresholds (ntop:Q): d_ffn numbers per recorded layer, in a file of each such rule's
own, STORE/rules/SLUG/thresholds.parquet (layer INT32, neuron INT32, threshold FLOAT: float32, exact
as the ingest compared them).

Not in the manifest: a large model's would be megabytes of JSON (80 layers x 28,672 neurons is 2.3
million numbers) that every command opening the store parses. The file is written when block 0 is
committed, and the ingest state records its digest instead of the numbers, so a resume reads back
the very thresholds the committed blocks used. It is listed in checksums.json like every file, and
read only through the checked path (StoreReader.neuron_thresholds, the neuron_thresholds view);
`actdb check` verifies its bytes and its shape.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StoreError
from ..files import file_digest, write_parquet
from .layout import STATE_FILE, rule_slug, rule_thresholds

COLUMNS = ("layer", "neuron", "threshold")


def write_neuron_thresholds(root: Path, rule: str, layers: tuple[int, ...], values: np.ndarray) -> dict[str, Any]:
    """Write a rule's thresholds (float32 [layers, d_ffn]) and record the file's checksum; returns
    its digest {bytes, sha256}."""
    import pyarrow as pa

    from .writer import record_checksums

    n, d = values.shape
    path = rule_thresholds(root, rule)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_parquet(pa.table({"layer": np.repeat(np.asarray(layers, dtype=np.int32), d),
                            "neuron": np.tile(np.arange(d, dtype=np.int32), n),
                            "threshold": np.ascontiguousarray(values, dtype=np.float32).reshape(-1)}), path)
    record_checksums(root, f"thresholds-{rule_slug(rule)}", [path])
    return file_digest(path)


def read_neuron_thresholds(path: Path, layers: tuple[int, ...], d_ffn: int) -> np.ndarray:
    """float32 [layers, d_ffn] from a thresholds file (its bytes checked by the caller)."""
    import pyarrow.parquet as pq

    try:
        t = pq.read_table(path)
    except (OSError, ValueError) as e:
        raise StoreError(f"{path}: unreadable ({e}); run `actdb check`") from None
    if tuple(t.column_names) != COLUMNS:
        raise StoreError(f"{path}: columns: expected {list(COLUMNS)}, got {t.column_names}")
    n = len(layers) * d_ffn
    if t.num_rows != n:
        raise StoreError(f"{path}: rows: expected {n} ({len(layers)} layers x {d_ffn} neurons), got {t.num_rows}")
    layer, neuron = (t[c].to_numpy().astype(np.int64) for c in ("layer", "neuron"))
    if not (np.array_equal(layer, np.repeat(layers, d_ffn)) and np.array_equal(neuron, np.tile(np.arange(d_ffn), len(layers)))):
        raise StoreError(f"{path}: layer, neuron: expected each recorded layer's neurons 0..{d_ffn - 1} in order, "
                         "got other rows")
    values = t["threshold"].to_numpy().astype(np.float32, copy=False)
    bad = ~(np.isfinite(values) & (values >= 0))
    if bad.any():
        raise StoreError(f"{path}: threshold: expected numbers >= 0, got {values[bad][0]!r}")
    return values.reshape(len(layers), d_ffn)


def to_state(root: Path, layers: tuple[int, ...], fixed: dict[str, Any], recorded: dict[str, Any]) -> dict[str, Any]:
    """The calibrated rules' thresholds as the ingest state records them: per layer as numbers; per
    neuron (arrays) written to the rule's file when first committed (with block 0), recorded by its
    digest."""
    out = dict(recorded)
    for name, v in fixed.items():
        if name not in out:
            out[name] = write_neuron_thresholds(root, name, layers, v) if isinstance(v, np.ndarray) else list(v)
    return out


def from_state(root: Path, recorded: dict[str, Any], layers: tuple[int, ...], d_ffn: int) -> dict[str, Any]:
    """The ingest state's thresholds as the fire tests take them: a per-neuron rule's read back from
    its file, which must be the one the state recorded."""
    out: dict[str, Any] = {}
    for name, v in recorded.items():
        if isinstance(v, dict):
            path = rule_thresholds(root, name)
            try:
                same = file_digest(path) == v
            except OSError:
                same = False
            if not same:
                raise StoreError(f"{path}: missing, or not the file whose digest {STATE_FILE} records; start the "
                                 "ingest again with --overwrite")
            v = read_neuron_thresholds(path, layers, d_ffn)
        out[name] = v
    return out
