"""Checked reads of mask chunks: never garbage, never a silent zero for a lost chunk."""
from __future__ import annotations

import hashlib
import itertools
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import StoreError
from ..files import check_regular_file


class CheckedArray:
    """Read-only view of a mask (or capture) array whose reads never return garbage: a chunk
    that fails its crc32c or cannot be decoded, one whose bytes are not the ones recorded at
    write time (sha256 of checksums.json: a chunk copied in from another store has a valid
    crc32c), one present but never recorded, or one recorded that is now missing (zarr would
    read it as zeros), raises StoreError naming the file. Each chunk file is hashed once per
    handle (again if its size, mtime or inode changes)."""

    def __init__(self, arr: Any, directory: Path, recorded: dict[str, Any] | None) -> None:
        """recorded: {chunk key relative to the array's folder: {"bytes", "sha256"}} from
        checksums.json; None for a store written without records (crc32c only)."""
        from zarr.codecs import BytesCodec, Crc32cCodec

        from .zarr_codec import BitRowsCodec

        self.arr, self.dir, self.recorded = arr, directory, recorded
        self._ok: dict[str, tuple[int, int, int]] = {}
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

    def _verify(self, rel: str, data: bytes | None = None) -> bool:
        """Check chunk file `rel` against its record (its bytes `data` if already read); False when
        it does not exist and was never written (all zero)."""
        path = self.dir / rel
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if self.recorded is not None and rel in self.recorded:
                raise self._missing(rel) from None
            return False
        if self.recorded is None:
            return True
        key = (st.st_size, st.st_mtime_ns, st.st_ino)
        if self._ok.get(rel) == key:
            return True
        want = self.recorded.get(rel)
        if want is None:
            raise StoreError(f"{path}: chunk not recorded at write time (readers would use it); "
                             "run `actdb check` on the store")
        if data is None:
            try:
                check_regular_file(path)
                data = path.read_bytes()
            except OSError as e:
                raise StoreError(f"{path}: unreadable chunk ({e.strerror or e})") from None
        if len(data) != want.get("bytes") or hashlib.sha256(data).hexdigest() != want.get("sha256"):
            raise StoreError(f"{path}: sha256 differs from the one recorded at write time (the chunk changed since, "
                             "or was copied from another store); run `actdb check` on the store")
        self._ok[rel] = key
        return True

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
                    check_regular_file(self.dir / rel)   # a FIFO would hang the read
                    data = (self.dir / rel).read_bytes()
                except FileNotFoundError:
                    self._verify(rel)   # raises if it was recorded
                    continue                                          # never written: all zero
                except OSError as e:
                    raise StoreError(f"{self.dir / rel}: unreadable mask chunk ({e.strerror or e})") from None
                self._verify(rel, data)
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
        for key in self._chunks(sel):   # zarr reads the files itself: each checked first
            self._verify(self.arr.metadata.encode_chunk_key(key))
        try:
            data = self.arr[sel]
        except Exception as e:  # zarr raises ValueError (crc32c), RuntimeError (zstd), ...
            for key in self._chunks(sel):
                region = tuple(slice(k * c, (k + 1) * c) for k, c in zip(key, self.chunks))
                try:
                    self.arr[region]
                except Exception as e_chunk:
                    raise self._corrupt(self._path(key), e_chunk) from None
            raise StoreError(f"{self.dir}: reading the array failed ({e})") from None
        return np.asarray(data)
