"""File helpers every stage shares: the one atomic write (text and Parquet) and file digests.

Atomic: readers see the old file or the new one, never a torn one (write beside, fsync,
rename, fsync the folder).
"""
from __future__ import annotations

import hashlib
import os
import re
import stat
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import StoreError
from .faults import point as fault_point


def fsync_dir(path: Path) -> None:
    """Make the renames in a folder durable."""
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


_TEMPORARY = re.compile(r"\.(?P<name>.+)\.\d+\.tmp")


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
        fault_point("atomic-tmp", path.name)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fault_point("atomic-done", path.name)
    fsync_dir(path.parent)


def temporary_of(name: str) -> str | None:
    """The file a name is atomic_path's temporary of (.NAME.PID.tmp -> NAME), else None: what a
    writer killed mid-write leaves behind. Only a writer holding the store's lock may remove one."""
    m = _TEMPORARY.fullmatch(name)
    return m["name"] if m else None


def remove_temporaries(folder: Path, suffixes: tuple[str, ...] = ()) -> list[Path]:
    """Remove the temporaries that killed writers left anywhere under `folder`: atomic_path's, and
    files ending in one of `suffixes` (zarr's .partial chunk writes). The caller holds the store's
    writer lock, so none of them belongs to a live writer. Returns what went."""
    gone = []
    for dirpath, _, files in os.walk(folder):
        for name in files:
            if temporary_of(name) is not None or name.endswith(suffixes or ("\0",)):
                p = Path(dirpath) / name
                p.unlink(missing_ok=True)
                gone.append(p)
    return gone


def exchange_dirs(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux renameat2 RENAME_EXCHANGE): every reader
    sees one or the other at each name, never neither. False where the OS or file system has no
    such call (the caller falls back to renames)."""
    import ctypes
    import errno
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except AttributeError:   # glibc before 2.28, musl
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        fsync_dir(Path(b).parent)
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


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


def check_regular_file(path: Path) -> None:
    """Refuse, in one line, anything but a regular file where a store's file belongs, judged by
    os.stat before any open: opening a FIFO waits for a writer forever, and a device may never
    end. A missing file raises FileNotFoundError, for the caller to say so."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "a device")
        raise StoreError(f"{path}: unreadable (expected a regular file, got {kind})")


def sha256_file(path: Path, deadline: float | None = None) -> str:
    """The file's sha256 (hex). deadline: a time.monotonic() past which it raises TimeoutError
    (checked before each 1 MiB read)."""
    check_regular_file(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while deadline is None or time.monotonic() <= deadline:
            block = f.read(1 << 20)
            if not block:
                return h.hexdigest()
            h.update(block)
    raise TimeoutError(path)


def stat_key(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime_ns) of a file, None when it is gone: a file written again differs."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def file_digest(path: Path) -> dict[str, Any]:
    """{"bytes", "sha256"} of a file (the record checksums.json and index.json keep)."""
    return {"bytes": Path(path).stat().st_size, "sha256": sha256_file(path)}
