"""On-disk store: layout, the ingest-time writer and the read-only handle.

    STORE/
      manifest.json              present only once the store is complete (written last)
      ingest-state.json          while ingesting: settings identity + committed progress
      masks/layer_LL             Zarr v3 uint8 [d_ffn, ceil(n_tokens/8)], see packing.py
      tokens/part-BBBBBB.parquet one part per block: row, seq, pos, token_id, doc, domain
      docs.parquet               doc, doc_id, domain, source
      vocab.parquet              token_id, token (decoded text), piece (vocabulary entry)
      checksums.json             bytes and sha256 of every file above, recorded as it was written
      _staging/                  token ids and sequence offsets for the forward passes
      _checksums/                while ingesting: the checksum records of each committed step

Commit protocol: a block's mask chunks are written (each chunk file atomically by zarr)
before `ingest-state.json` records the block as done, so a kill leaves at most
uncommitted chunks, which resume rewrites. Nothing is read from an incomplete store
unless asked for explicitly.

Integrity: each step hashes the files it just wrote into `_checksums/STEP.json` before it
commits; at the end they are merged into `checksums.json`, whose sha256 the manifest
records (`actdb check` verifies the chain). Mask chunks also carry a crc32c that zarr
verifies on every read, so a flipped bit or a cut file raises instead of reading garbage.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import shutil
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .corpus import sha256_file
from .errors import StoreError
from .manifest import MANIFEST_FILE, Manifest, atomic_write_text
from .packing import unpack
from .settings import MASK_CODECS

STATE_FILE = "ingest-state.json"
STAGING = "_staging"
CHECKSUMS_FILE = "checksums.json"
PENDING_CHECKSUMS = "_checksums"


def layer_name(layer: int) -> str:
    return f"layer_{layer:02d}"


def codec_name(codec: str, level: int) -> str:
    """The manifest's record of the mask codec."""
    return f"{codec}(level={level})+crc32c"


def mask_compressors(codec: str, level: int) -> list[Any]:
    """Zarr compressors of the mask arrays: the codec, then a crc32c that zarr checks on
    every read (a flipped bit raises, see CheckedArray)."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    from .zarr_codec import BitRowsCodec

    if codec not in MASK_CODECS:
        raise ValueError(f"mask codec: expected one of {', '.join(MASK_CODECS)}, got {codec!r}")
    return [BitRowsCodec(level=level) if codec == "bitrows" else ZstdCodec(level=level), Crc32cCodec()]


def file_digest(path: Path) -> dict[str, Any]:
    """{"bytes", "sha256"} of a file (the same record the index keeps for its files)."""
    return {"bytes": Path(path).stat().st_size, "sha256": sha256_file(path)}


def record_checksums(root: Path, step: str, paths: Iterable[Path]) -> None:
    """Hash the files a step just wrote (still in the page cache) into _checksums/STEP.json,
    before the step is committed; files that do not exist (empty chunks) are not recorded."""
    root = Path(root)
    files = {}
    for p in paths:
        try:
            files[Path(p).relative_to(root).as_posix()] = file_digest(p)
        except FileNotFoundError:
            continue
    (root / PENDING_CHECKSUMS).mkdir(exist_ok=True)
    atomic_write_text(root / PENDING_CHECKSUMS / f"{step}.json", json.dumps(files, sort_keys=True))


def seal_checksums(root: Path) -> str:
    """Merge the steps' records into checksums.json; returns its sha256 (for the manifest)."""
    files: dict[str, Any] = {}
    for p in sorted((root / PENDING_CHECKSUMS).glob("*.json")):
        files.update(json.loads(p.read_text(encoding="utf-8")))
    text = json.dumps({"algorithm": "sha256", "files": files}, indent=0, sort_keys=True)
    atomic_write_text(root / CHECKSUMS_FILE, text)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def block_chunk_files(group_dir: Path, arrays: dict[str, Any], block: int) -> list[Path]:
    """Chunk files of `block` (chunk index along axis 1, the token axis) of zarr arrays."""
    out = []
    for name, arr in arrays.items():
        grid = [range(-(-s // c)) for s, c in zip(arr.shape, arr.chunks)]
        grid[1] = range(block, block + 1)
        out += [Path(group_dir) / name / arr.metadata.encode_chunk_key(k) for k in itertools.product(*grid)]
    return out


def is_store(path: Path) -> bool:
    return (path / MANIFEST_FILE).exists() or (path / STATE_FILE).exists()


def read_state(root: Path) -> dict[str, Any] | None:
    p = root / STATE_FILE
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{p}: unreadable ingest state ({e})") from None


def write_state(root: Path, state: dict[str, Any]) -> None:
    atomic_write_text(root / STATE_FILE, json.dumps(state, indent=1, sort_keys=True))


def remove_store(root: Path) -> None:
    """Delete a store (only something that is one, or an empty folder)."""
    if not root.exists():
        return
    if not root.is_dir():
        raise StoreError(f"{root}: exists and is not a folder")
    if any(root.iterdir()) and not is_store(root):
        raise StoreError(f"{root}: folder is not empty and is not an actdb store; refusing to overwrite it")
    shutil.rmtree(root)


class MaskWriter:
    """Zarr arrays of one store, opened for writing whole blocks."""

    def __init__(self, root: Path, layers: tuple[int, ...], d_ffn: int, n_tokens: int,
                 block_tokens: int, neuron_chunk: int, codec: str, zstd_level: int, create: bool) -> None:
        import zarr

        self.block_bytes = block_tokens // 8
        self.dir = root / "masks"
        group = zarr.open_group(self.dir, mode="a")
        self.arrays = {}
        for layer in layers:
            if create:
                self.arrays[layer] = group.create_array(
                    layer_name(layer), shape=(d_ffn, (n_tokens + 7) // 8), dtype="uint8",
                    chunks=(min(neuron_chunk, d_ffn), self.block_bytes), fill_value=0,
                    compressors=mask_compressors(codec, zstd_level), overwrite=True,
                    # all-zero chunks (dead neurons, silent stretches) are not stored at all
                    config={"write_empty_chunks": False})
            else:
                self.arrays[layer] = group[layer_name(layer)]

    def write_block(self, index: int, data: np.ndarray) -> None:
        """data: [n_layers, d_ffn, nbytes] for block `index`, in the order of `layers`."""
        start = index * self.block_bytes
        for i, arr in enumerate(self.arrays.values()):
            arr[:, start:start + data.shape[-1]] = data[i]

    def block_files(self, index: int) -> list[Path]:
        """The chunk files block `index` may have written (all-zero chunks are not)."""
        return block_chunk_files(self.dir, {layer_name(l): a for l, a in self.arrays.items()}, index)


class CheckedArray:
    """Read-only view of a mask array whose reads never return garbage: a chunk that fails
    its crc32c or cannot be decoded, or one recorded at write time that is now missing (zarr
    would read it as zeros), raises StoreError naming the file."""

    def __init__(self, arr: Any, directory: Path, recorded: set[str] | None) -> None:
        from zarr.codecs import BytesCodec, Crc32cCodec

        from .zarr_codec import BitRowsCodec

        self.arr, self.dir, self.recorded = arr, directory, recorded
        self.shape, self.chunks, self.dtype = tuple(arr.shape), tuple(arr.chunks), arr.dtype
        # bitrows chunks are read here, not through zarr: decoding only the rows asked for makes
        # a read of a few neurons cheap (the index reads sub-chunk units, ~20 per chunk)
        kinds = [type(c) for c in arr.metadata.codecs]
        self.direct = kinds == [BytesCodec, BitRowsCodec, Crc32cCodec] and len(self.shape) == 2

    def _chunks(self, sel: Any) -> Iterable[tuple[int, ...]]:
        sel = sel if isinstance(sel, tuple) else (sel,)
        ranges = []
        for ax, (n, c) in enumerate(zip(self.shape, self.chunks)):
            s = sel[ax] if ax < len(sel) else slice(None)
            if isinstance(s, (int, np.integer)):
                s = slice(int(s) % n, int(s) % n + 1)
            if isinstance(s, slice):
                lo, hi, _ = s.indices(n)
                ranges.append(range(lo // c, -(-hi // c)) if hi > lo else range(0))
            else:  # anything else: every chunk along the axis
                ranges.append(range(-(-n // c)))
        return itertools.product(*ranges)

    def _path(self, key: tuple[int, ...]) -> Path:
        return self.dir / self.arr.metadata.encode_chunk_key(key)

    def _corrupt(self, path: Path, e: Exception) -> StoreError:
        return StoreError(f"{path}: corrupt mask chunk ({e}); run `actdb check` on the store")

    def _missing(self, rel: str) -> StoreError:
        return StoreError(f"{self.dir / rel}: mask chunk missing (recorded at write time); run `actdb check` on the store")

    def _read_rows(self, rows: slice, cols: slice) -> np.ndarray:
        """arr[rows, cols] of a bitrows array, chunk by chunk: each chunk file's crc32c checked,
        only the rows asked for decoded."""
        import google_crc32c

        from . import codec

        (r0, r1, _), (c0, c1, _) = rows.indices(self.shape[0]), cols.indices(self.shape[1])
        r1, c1 = max(r0, r1), max(c0, c1)
        (rc, cc) = self.chunks
        out = np.zeros((r1 - r0, c1 - c0), dtype=np.uint8)
        for ci in range(r0 // rc, -(-r1 // rc)):
            for cj in range(c0 // cc, -(-c1 // cc)):
                rel = self.arr.metadata.encode_chunk_key((ci, cj))
                try:
                    data = (self.dir / rel).read_bytes()
                except FileNotFoundError:
                    if self.recorded is not None and rel in self.recorded:
                        raise self._missing(rel) from None
                    continue                                          # never written: all zero
                except OSError as e:
                    raise StoreError(f"{self.dir / rel}: unreadable mask chunk ({e.strerror or e})") from None
                lo, hi = max(r0, ci * rc) - ci * rc, min(r1, (ci + 1) * rc) - ci * rc
                b0, b1 = max(c0, cj * cc) - cj * cc, min(c1, (cj + 1) * cc) - cj * cc
                try:
                    if len(data) < 4 or google_crc32c.value(data[:-4]) != int.from_bytes(data[-4:], "little"):
                        raise ValueError("crc32c does not match")
                    part = codec.decode(memoryview(data)[:-4], rows=(lo, hi))
                    if part.shape[1] != cc:
                        raise ValueError(f"expected rows of {cc} bytes, got {part.shape[1]}")
                except ValueError as e:
                    raise self._corrupt(self.dir / rel, e) from None
                out[ci * rc + lo - r0:ci * rc + hi - r0, cj * cc + b0 - c0:cj * cc + b1 - c0] = part[:, b0:b1]
        return out

    def __getitem__(self, sel: Any) -> np.ndarray:
        if (self.direct and isinstance(sel, tuple) and len(sel) == 2
                and all(isinstance(s, slice) and s.step in (None, 1) for s in sel)):
            return self._read_rows(*sel)
        try:
            data = self.arr[sel]
        except Exception as e:  # zarr raises ValueError (crc32c), RuntimeError (zstd), ...
            for key in self._chunks(sel):
                region = tuple(slice(k * c, (k + 1) * c) for k, c in zip(key, self.chunks))
                try:
                    self.arr[region]
                except Exception as e_chunk:
                    raise self._corrupt(self._path(key), e_chunk) from None
            raise StoreError(f"{self.dir}: reading the mask array failed ({e})") from None
        if self.recorded is not None:
            for key in self._chunks(sel):
                rel = self.arr.metadata.encode_chunk_key(key)
                if rel in self.recorded and not (self.dir / rel).exists():
                    raise self._missing(rel) from None
        return np.asarray(data)


class Store:
    """Read-only handle on a complete store (see `actdb.open`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise StoreError(f"{self.path}: no such store")
        if not (self.path / MANIFEST_FILE).exists():
            if (self.path / STATE_FILE).exists():
                raise StoreError(f"{self.path}: ingest not finished (run `actdb ingest ... --resume` to complete it)")
            raise StoreError(f"{self.path}: not an actdb store (no {MANIFEST_FILE})")
        self.manifest = Manifest.read(self.path)
        self._arrays: dict[int, Any] = {}
        self._check_parts()

    def _check_parts(self) -> None:
        """A missing or extra token part would silently change every count over tokens."""
        m = self.manifest
        want = {f"part-{b:06d}.parquet" for b in range(-(-m.n_tokens // m.block_tokens))}
        have = {p.name for p in (self.path / "tokens").glob("part-*.parquet")}
        if have != want:
            bad = sorted(want - have)
            what = f"missing {bad[0]}" + (f" and {len(bad) - 1} more" if len(bad) > 1 else "") if bad \
                else f"unexpected {sorted(have - want)[0]}"
            raise StoreError(f"{self.path / 'tokens'}: expected {len(want)} token parts, {what} "
                             f"(run `actdb check {self.path}`)")

    def _recorded(self, layer: int) -> set[str] | None:
        """Chunk keys of a layer's mask array recorded in checksums.json (None: none recorded)."""
        if not self.manifest.checksums_sha256:
            return None
        files = getattr(self, "_checksum_files", None)
        if files is None:
            p = self.path / CHECKSUMS_FILE
            try:
                raw = p.read_bytes()
            except OSError as e:
                raise StoreError(f"{p}: unreadable ({e.strerror or e}); run `actdb check {self.path}`") from None
            if hashlib.sha256(raw).hexdigest() != self.manifest.checksums_sha256:
                raise StoreError(f"{p}: does not match the manifest; run `actdb check {self.path}`")
            files = self._checksum_files = json.loads(raw)["files"]
        prefix = f"masks/{layer_name(layer)}/"
        return {k[len(prefix):] for k in files if k.startswith(prefix)}

    def __repr__(self) -> str:
        m = self.manifest
        return (f"<actdb.Store {self.path} model={m.model} layers={len(m.layers)}x{m.d_ffn} "
                f"tokens={m.n_tokens}>")

    def describe(self) -> list[str]:
        m = self.manifest
        return [
            f"store        {self.path}",
            f"model        {m.model} ({m.model_class}, {m.architecture}, weights sha256 {m.weights_sha256[:12]})",
            f"fired        {m.fire_rule}",
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

        parts = sorted((self.path / "tokens").glob("part-*.parquet"))
        if not parts:
            raise StoreError(f"{self.path / 'tokens'}: no token parts")
        return pl.read_parquet(parts)

    def docs(self):
        import polars as pl

        return pl.read_parquet(self.path / "docs.parquet")

    def vocab(self):
        import polars as pl

        return pl.read_parquet(self.path / "vocab.parquet")

    def packed(self, layer: int):
        """The mask array of a layer, uint8 [d_ffn, ceil(n_tokens/8)], read through CheckedArray."""
        if layer not in self.manifest.layers:
            raise StoreError(f"layer {layer}: expected one of the recorded layers {list(self.manifest.layers)}, got {layer}")
        arr = self._arrays.get(layer)
        if arr is None:
            import zarr
            from zarr.storage import LocalStore

            from . import zarr_codec  # noqa: F401  (registers the actdb.bitrows codec with zarr)

            try:
                arr = zarr.open_array(LocalStore(self.path / "masks", read_only=True), path=layer_name(layer), mode="r")
            except Exception as e:  # zarr raises several types for a missing or bad array
                raise StoreError(f"{self.path / 'masks' / layer_name(layer)}: cannot open mask array ({e})") from None
            expected = (self.manifest.d_ffn, (self.n_tokens + 7) // 8)
            if tuple(arr.shape) != expected:
                raise StoreError(f"{self.path / 'masks' / layer_name(layer)}: shape: expected {expected}, got {tuple(arr.shape)}")
            arr = self._arrays[layer] = CheckedArray(arr, self.path / "masks" / layer_name(layer),
                                                     self._recorded(layer))
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
        arr = self.packed(layer)
        raw = arr[neurons, start // 8:(stop + 7) // 8]
        return unpack(raw, stop - start, start % 8)

    def _db(self):
        con = getattr(self, "_con", None)
        if con is None:
            from .db import connect

            con = self._con = connect(self)
        return con

    def views(self) -> set[str]:
        """Names of the SQL views this store offers (capture and projection views only where
        the store has them); read once per handle."""
        names = getattr(self, "_views", None)
        if names is None:
            names = self._views = set(self.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal")
                                      ["view_name"].to_list())
        return names

    def sql(self, query: str, params: dict[str, Any] | None = None, arrow: bool = False):
        """Run one read-only SQL statement over the views (see actdb.db); `$name` parameters
        are bound from params. Returns a Polars DataFrame (pyarrow Table with arrow=True)."""
        from .db import run_sql

        table = run_sql(self, query, params, con=self._db())
        if arrow:
            return table
        import polars as pl

        return pl.from_arrow(table)

    def query(self, name_or_file: str, params: dict[str, Any] | None = None, arrow: bool = False):
        """Run a saved query (a name from queries/ or a .sql file) with its header's defaults."""
        from .db import run_saved

        table = run_saved(self, name_or_file, params, con=self._db())
        if arrow:
            return table
        import polars as pl

        return pl.from_arrow(table)


def open(path: str | Path) -> Store:  # noqa: A001 - the public name is actdb.open
    """Open a complete store read-only."""
    return Store(path)
