"""The read-only handle on a complete store (`actdb.open` adds the SQL views, see actdb.query)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from ..errors import StoreError
from ..files import check_regular_file, file_digest, stat_key
from .layout import (CAPTURE_DIR, CHECKSUMS_FILE, DOCS_FILE, MANIFEST_FILE, PROJECTION_FILE, STATE_FILE, TOKENS_DIR,
                     VOCAB_FILE, layer_name, part_name, rule_masks, rule_thresholds, token_parts)
from .manifest import Manifest

if TYPE_CHECKING:
    import numpy as np

# numpy, the mask bits and the chunk reader load on the first mask read: SQL over the
# views needs none of them, and a short `actdb sql` should not pay for their import


class StoreReader:
    """Read-only handle on a complete store's files: manifest, tokens, masks (`actdb.open` adds SQL).
    `rule`: the fire rule whose masks (and views) it reads; default the store's first."""

    def __init__(self, path: str | Path, rule: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise StoreError(f"{self.path}: no such store")
        if not (self.path / MANIFEST_FILE).exists():
            if (self.path / STATE_FILE).exists():
                raise StoreError(f"{self.path}: ingest not finished (run `actdb ingest ... --resume` to complete it)")
            raise StoreError(f"{self.path}: not an actdb store (no {MANIFEST_FILE})")
        self._opened = stat_key(self.path / MANIFEST_FILE)
        self.manifest = Manifest.read(self.path)
        self.rule = self.manifest.rules[0] if rule is None else self.manifest.rule_record(str(rule)).name
        self._arrays: dict[tuple[str, str], Any] = {}
        self._check_parts()

    def check_current(self) -> None:
        """Refuse to read on when the store was written again (ingest --overwrite) or removed since
        this handle opened it: its files would not be the ones its manifest and records describe.
        One stat; every read path calls it."""
        if stat_key(self.path / MANIFEST_FILE) != self._opened:
            raise StoreError(f"{self.path}: the store was written again or removed since this handle opened it; "
                             f"open it again (`actdb.open`, or restart `actdb serve`)")

    def verify_files(self, paths: Iterable[Path]) -> None:
        """Check Parquet files of the store against their records before reading them (the
        handle's guard, store/parquet_guard.py: each file once per handle)."""
        from .parquet_guard import parquet_guard

        self.check_current()
        parquet_guard(self).verify(paths)

    @property
    def rules(self) -> tuple[str, ...]:
        """The store's fire rules, in order (the first is the default)."""
        return self.manifest.rules

    def with_rule(self, rule: str | None):
        """A handle of the same kind on the same store reading fire rule `rule` (None: this one)."""
        if rule is None or str(rule) == self.rule:
            return self
        return type(self)(self.path, rule=str(rule))

    def _check_parts(self) -> None:
        """A missing or extra token part would silently change every count over tokens."""
        m = self.manifest
        n_want = -(-m.n_tokens // m.block_tokens)
        have = {p.name for p in token_parts(self.path)}
        # the names are built only as far as the files that exist (the manifest's count may be anything)
        want = {part_name(b) for b in range(min(n_want, len(have) + 1))}
        if len(have) != n_want or have != want:
            missing = sorted(want - have)
            what = f"missing {missing[0]}" if missing else f"unexpected {sorted(have - want)[0]}"
            raise StoreError(f"{self.path / TOKENS_DIR}: expected {n_want} token parts, got {len(have)} ({what}) "
                             f"(run `actdb check {self.path}`)")

    def checksum_records(self) -> dict[str, Any] | None:
        """checksums.json's {relative path: {"bytes", "sha256"}}, checked against the manifest's
        sha256 and read once per handle; None for a store written without records."""
        if not self.manifest.checksums_sha256:
            return None
        files = getattr(self, "_checksum_files", None)
        if files is None:
            p = self.path / CHECKSUMS_FILE
            try:
                check_regular_file(p)
                raw = p.read_bytes()
            except OSError as e:
                raise StoreError(f"{p}: unreadable ({e.strerror or e}); run `actdb check {self.path}`") from None
            if hashlib.sha256(raw).hexdigest() != self.manifest.checksums_sha256:
                raise StoreError(f"{p}: sha256 differs from the one in the manifest; run `actdb check {self.path}`")
            files = self._checksum_files = json.loads(raw)["files"]
        return files

    def _recorded(self, array_dir: Path) -> dict[str, Any] | None:
        """{chunk key: digest} of an array's chunks recorded in checksums.json (None: none recorded)."""
        files = self.checksum_records()
        if files is None:
            return None
        prefix = f"{array_dir.relative_to(self.path).as_posix()}/"
        return {k[len(prefix):]: v for k, v in files.items() if k.startswith(prefix)}

    def __repr__(self) -> str:
        m = self.manifest
        return (f"<actdb.Store {self.path} model={m.model} layers={len(m.layers)}x{m.d_ffn} "
                f"tokens={m.n_tokens}>")

    def describe(self) -> list[str]:
        m = self.manifest
        return [
            f"store        {self.path}",
            f"model        {m.model} ({m.model_class}, {m.architecture}, weights sha256 {m.weights_sha256[:12]})",
            *[f"fired        {r}: {m.rule_record(r).definition}" + (" (default)" if i == 0 else "")
              for i, r in enumerate(m.rules)],
            f"layers       {len(m.layers)} of {m.n_layers} recorded, {m.d_ffn} neurons each, d_model {m.d_model}",
            f"tokens       {m.n_tokens:,} in {m.n_sequences:,} sequences ({m.mode}, seq_len {m.seq_len}) "
            f"from {m.n_docs:,} documents",
            f"dtype        {m.dtype}",
            *[f"corpus       {c.path} ({c.bytes:,} bytes, sha256 {c.sha256[:12]})" for c in m.corpus],
            f"format       {m.format_version} (actdb {m.actdb_version}), masks {m.codec}",
        ]

    @property
    def n_tokens(self) -> int:
        return self.manifest.n_tokens

    def tokens(self):
        """Token table as a Polars DataFrame: row, seq, pos, token_id, doc, domain."""
        import polars as pl

        parts = token_parts(self.path)
        if not parts:
            raise StoreError(f"{self.path / TOKENS_DIR}: no token parts")
        self.verify_files(parts)
        return pl.read_parquet(parts)

    def docs(self):
        """Documents as a Polars DataFrame: doc, doc_id, domain, source."""
        return self.table(DOCS_FILE)

    def vocab(self):
        """Vocabulary as a Polars DataFrame: token_id, token, piece."""
        return self.table(VOCAB_FILE)

    def table(self, name: str, columns: list[str] | None = None, arrow: bool = False):
        """A Parquet file of the store (docs.parquet, vocab.parquet), checked against its record
        first; a Polars DataFrame (pyarrow Table with arrow=True)."""
        import pyarrow.parquet as pq

        path = self.path / name
        if not path.exists():
            raise StoreError(f"{path}: missing; run `actdb check {self.path}`")
        self.verify_files([path])
        try:
            t = pq.read_table(path, columns=columns)
        except (OSError, ValueError) as e:
            raise StoreError(f"{path}: unreadable ({e}); run `actdb check {self.path}`") from None
        if arrow:
            return t
        import polars as pl

        return pl.from_arrow(t)

    def projection_file(self) -> Path:
        """projection.safetensors, checked against its record (the vocabulary projection's input)."""
        from ..files import sha256_file

        self.check_current()
        p = self.path / PROJECTION_FILE
        want = (self.checksum_records() or {}).get(PROJECTION_FILE)
        if want is not None and (not p.is_file() or p.stat().st_size != want.get("bytes")
                                 or sha256_file(p) != want.get("sha256")):
            raise StoreError(f"{p}: missing, or not the bytes recorded at write time; run `actdb check {self.path}`")
        return p

    def neuron_thresholds(self, rule: str | None = None) -> np.ndarray:
        """A per-neuron rule's thresholds (ntop:Q; default this handle's rule), float32 [recorded
        layers, d_ffn], from its file checked against its record (store/neuron_thresholds.py)."""
        from ..errors import InputError
        from ..grammar import NEURON_THRESHOLDS, parse_fire_rule
        from .neuron_thresholds import read_neuron_thresholds

        rule = self.rule if rule is None else self.manifest.rule_record(str(rule)).name
        if parse_fire_rule(rule).kind not in NEURON_THRESHOLDS:
            raise InputError(f"rule: expected one with per-neuron thresholds (ntop:Q), got {rule!r}")
        p = rule_thresholds(self.path, rule)
        if not p.exists():
            raise StoreError(f"{p}: missing; run `actdb check {self.path}`")
        self.verify_files([p])
        return read_neuron_thresholds(p, self.manifest.layers, self.manifest.d_ffn)

    def packed(self, layer: int):
        """The mask array of a layer under this handle's rule, uint8 [d_ffn, ceil(n_tokens/8)], read
        through CheckedArray."""
        if layer not in self.manifest.layers:
            raise StoreError(f"layer {layer}: expected one of the recorded layers {list(self.manifest.layers)}, got {layer}")
        return self._array(rule_masks(self.path, self.rule), layer_name(layer),
                           (self.manifest.d_ffn, (self.n_tokens + 7) // 8))

    def capture(self, kind: str, field: str):
        """A magnitude capture array (CAPTURE_DIR/KIND_FIELD, ingest/capture.py) through CheckedArray:
        [recorded layers, n_tokens, ...]."""
        if kind not in self.manifest.capture:
            raise StoreError(f"capture {kind}: expected one of the captured kinds {list(self.manifest.capture)}")
        return self._array(self.path / CAPTURE_DIR, f"{kind}_{field}", (len(self.manifest.layers), self.n_tokens))

    def _array(self, group: Path, name: str, shape: tuple[int, ...]):
        """Zarr array `name` of folder `group` as a CheckedArray (opened once per handle), whose
        leading dimensions must be `shape`."""
        self.check_current()
        arr = self._arrays.get((str(group), name))
        if arr is None:
            import zarr
            from zarr.storage import LocalStore

            from . import zarr_codec  # noqa: F401  (registers the actdb.bitrows codec with zarr)
            from .checked_array import CheckedArray

            meta = group / name / "zarr.json"
            want = (self.checksum_records() or {}).get(meta.relative_to(self.path).as_posix())
            if want is not None and (not meta.is_file() or file_digest(meta) != want):
                raise StoreError(f"{meta}: missing, or not the bytes recorded at write time; "
                                 f"run `actdb check {self.path}`")
            try:
                arr = zarr.open_array(LocalStore(group, read_only=True), path=name, mode="r")
            except Exception as e:  # zarr raises several types for a missing or bad array
                raise StoreError(f"{group / name}: cannot open the array ({e})") from None
            if tuple(arr.shape[:len(shape)]) != shape:
                raise StoreError(f"{group / name}: shape: expected {shape}, got {tuple(arr.shape)}")
            arr = self._arrays[(str(group), name)] = CheckedArray(arr, group / name, self._recorded(group / name))
        return arr

    def masks(self, layer: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Fire mask of a layer as bool [rows, d_ffn] for token rows start..stop."""
        return self.neuron_masks(layer, slice(None), start, stop).T

    def neuron(self, layer: int, neuron: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Fire mask of one neuron as bool [rows]."""
        if not 0 <= neuron < self.manifest.d_ffn:
            raise StoreError(f"neuron: expected 0..{self.manifest.d_ffn - 1}, got {neuron}")
        return self.neuron_masks(layer, slice(neuron, neuron + 1), start, stop)[0]

    def neuron_masks(self, layer: int, neurons: slice, start: int = 0, stop: int | None = None) -> np.ndarray:
        """bool [neurons, rows] for token rows start..stop (neuron-major, as stored)."""
        stop = self.n_tokens if stop is None else min(stop, self.n_tokens)
        if not 0 <= start <= stop:
            raise StoreError(f"rows: expected 0 <= start <= stop <= {self.n_tokens}, got {start}..{stop}")
        from .bits import unpack

        arr = self.packed(layer)
        raw = arr[neurons, start // 8:(stop + 7) // 8]
        return unpack(raw, stop - start, start % 8)
