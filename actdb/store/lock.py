"""One writer per store: an exclusive OS lock on STORE/.actdb.lock.

Ingest, index build and `--overwrite` hold it while they write; readers never take it.
It is an flock (advisory, non-blocking), so the kernel frees it when its holder exits, even by
SIGKILL: a stale lock file is harmless, whoever comes next simply locks it again.
The file holds the holder's PID, so a second writer can say who has the store.

Reentrant within a process: the ingest's own index build at its end passes through the
ingest's lock instead of failing on it (an flock is per open file, so locking twice from one
process would conflict with itself).
"""
from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import StoreError
from .layout import LOCK_FILE

_held: dict[Path, int] = {}   # resolved store -> fd of the lock this process holds on it
_guard = threading.Lock()


@contextmanager
def writer_lock(store: str | Path, what: str) -> Iterator[None]:
    """Hold the store's writer lock for the block; `what` (e.g. "ingest") is recorded with the PID.

    Raises StoreError at once, naming the store and the holder's PID, when another process
    holds it. The store folder must exist. Nested use in one process passes through."""
    root = Path(store).resolve()
    with _guard:
        if root in _held:
            nested = True
        else:
            nested = False
            _held[root] = _acquire(root, what)
    if nested:   # the outer holder releases it
        yield
        return
    try:
        yield
    finally:
        with _guard:
            fd = _held.pop(root)
        # unlink while still holding it, then unlock: whoever opened the old file re-checks the
        # inode after locking (see _acquire) and retries on the new one, so there are never two
        try:
            (root / LOCK_FILE).unlink(missing_ok=True)
        except OSError:   # read-only by now, or the folder is gone: the lock file stays, harmless
            pass
        os.close(fd)


def _acquire(root: Path, what: str) -> int:
    path = root / LOCK_FILE
    if not root.is_dir():
        raise StoreError(f"{root}: expected a store folder, got {'nothing' if not root.exists() else 'a file'}")
    for _ in range(100):   # only retried when the lock file was replaced under us
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise StoreError(f"{root}: cannot take the writer lock ({e.strerror or e}); "
                             f"writing needs a writable store folder") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StoreError(f"{root}: cannot take the writer lock ({e.strerror or e})") from None
            raise StoreError(_busy(root)) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:   # the previous holder removed the file after we opened it: lock the new one
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {what}\n".encode())
        return fd
    raise StoreError(f"{root}: cannot take the writer lock (its file keeps being replaced)")


def _busy(root: Path) -> str:
    text = ""
    for _ in range(20):   # the holder writes its PID right after locking: give it a moment
        try:
            text = (root / LOCK_FILE).read_text(encoding="ascii", errors="replace").strip()
        except OSError:
            text = ""
        if text:
            break
        time.sleep(0.01)
    pid, _, doing = text.partition(" ")
    who = f"pid {pid}" + (f", {doing}" if doing else "") if pid.isdigit() else "pid unknown"
    return (f"{root}: locked by another actdb writer ({who}); expected one writer at a time: "
            f"wait for it to finish, or stop that process")
