"""File helpers every stage shares: the one atomic write (text and Parquet) and file digests.

Atomic: readers see the old file or the new one, never a torn one (write beside, fsync,
rename, fsync the folder).
"""
from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def _fsync_dir(path: Path) -> None:
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def tmp_path(path: Path) -> Path:
    """Where an atomic write of `path` stages its bytes (hidden, per process)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write `path` through; renamed over `path` when the block
    ends without an error, removed otherwise."""
    path = Path(path)
    tmp = tmp_path(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a small text file atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


PARQUET_OPTIONS: dict[str, Any] = {"compression": "zstd", "write_page_checksum": True}


def write_parquet(table: Any, path: Path, **options: Any) -> None:
    """Write a pyarrow Table as Parquet atomically (zstd, page checksums)."""
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **{**PARQUET_OPTIONS, **options})


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_digest(path: Path) -> dict[str, Any]:
    """{"bytes", "sha256"} of a file (the record checksums.json and index.json keep)."""
    return {"bytes": Path(path).stat().st_size, "sha256": sha256_file(path)}
