"""Parquet files are never answered from unless they hold the bytes actdb wrote.

DuckDB (2.0.1) does not verify Parquet page CRCs: a flipped byte in a data page of a file
written with page checksums still reads, as a different number, with no error. So a query
first checks each Parquet file it will read against the sha256 recorded when it was written:
index/index.json for the index's files, checksums.json (whose own sha256 the manifest
records) for the token parts, docs.parquet and vocab.parquet.

Why sha256 and not pyarrow's page_checksum_verification: that needs a full decode of every
column, ~0.05 GB/s per core here, against ~0.6 GB/s for sha256 over the same file, and DuckDB
then reads the file again anyway. Kept cheap by being lazy: a query checks only the files
behind the views and macros it names (query/dependencies.py; anything that can reach other
files, such as read_parquet or query_table, checks every file), each file once per handle
(again if its size, mtime or inode changes). Readers write nothing, so nothing is cached on
disk. The checks of a statement count against its time limit (a deadline: CheckTimeout).
"""
from __future__ import annotations

import glob
import os
import stat
from pathlib import Path
from typing import Any, Iterable

from ..errors import CheckTimeout, StoreError
from ..files import sha256_file
from .layout import CHECKSUMS_FILE, INDEX_FILE, TRANSIENT, rule_dir

class ParquetGuard:
    """The recorded digests of a store's Parquet files and the files behind each SQL view."""

    def __init__(self, root: str | Path, checksum_files: dict[str, Any] | None, indexes: dict[Path, Any]) -> None:
        """checksum_files: checksums.json's records (StoreReader.checksum_records);
        indexes: {index folder: its record (store.index_info.IndexInfo), or None} of every fire
        rule: a folder whose record is missing, damaged or another store's has no file anyone
        may read."""
        self.root = Path(root)
        self._records: dict[str, tuple[dict[str, Any], str]] = {}   # normalised path -> (digest, where recorded)
        self._areas: list[str] = []    # folders whose every Parquet file must be recorded
        self._ok: dict[str, tuple[int, int, int]] = {}   # verified: path -> (size, mtime_ns, inode)
        for index_dir, rec in indexes.items():
            self._areas.append(_norm(index_dir))
            for rel, digest in (rec.files if rec is not None else {}).items():
                p = index_dir / rel if (index_dir / rel).exists() or not (self.root / rel).exists() else self.root / rel
                self._records[_norm(p)] = (digest, str(index_dir / INDEX_FILE))
        if checksum_files is not None:
            where = str(self.root / CHECKSUMS_FILE)
            for rel, digest in checksum_files.items():
                if rel.endswith(".parquet"):
                    self._records[_norm(self.root / rel)] = (digest, where)
            # with records, any Parquet file in the store that none of them lists is refused
            self._areas.append(_norm(self.root))

    # ------------------------------------------------------------ files

    def verify(self, paths: Iterable[str | Path], deadline: float | None = None) -> None:
        """Check each file (or glob) against its record; raises StoreError naming the first that
        differs. deadline: a time.monotonic() past which it raises CheckTimeout."""
        for pattern in paths:
            for path in sorted(glob.glob(str(pattern))) if glob.has_magic(str(pattern)) else [str(pattern)]:
                self._verify_one(_norm(path), deadline)

    def verify_all(self, deadline: float | None = None) -> None:
        """Every recorded Parquet file, and no unrecorded one where a view's glob would read it."""
        self.verify(self._records, deadline)
        for area in self._areas:
            self.verify(_parquet_files(area), deadline)

    def _verify_one(self, path: str, deadline: float | None = None) -> None:
        try:
            st = os.lstat(path)   # one call per file and statement: of a file it is its stat, and it shows a link
        except FileNotFoundError:
            if path in self._records:
                raise StoreError(f"{path}: missing (recorded in {self._records[path][1]}); "
                                 f"run `actdb check {self.root}`") from None
            return   # a file no view reads
        if stat.S_ISLNK(st.st_mode):   # actdb writes no links: one could lead a view's glob out of the store
            raise StoreError(f"{path}: a symbolic link where actdb writes only files; not answering from it; "
                             f"run `actdb check {self.root}`")
        if not stat.S_ISREG(st.st_mode):   # a FIFO would hang the reader, a device would never end
            raise StoreError(f"{path}: expected a file, got a special file; not answering from it")
        key = (st.st_size, st.st_mtime_ns, st.st_ino)
        if self._ok.get(path) == key:
            return
        rec = self._records.get(path)
        if rec is None:
            if _in_transient(path):
                raise StoreError(f"{path}: a file of a build or ingest in progress, which no view reads; "
                                 "not answering from it")
            if any(path.startswith(a + os.sep) for a in self._areas):
                raise StoreError(f"{path}: not recorded at write time (a view would read it); "
                                 f"expected only the files actdb wrote; run `actdb check {self.root}`")
            return   # a store written without records (older actdb): nothing to compare with
        digest, where = rec
        if not isinstance(digest, dict) or st.st_size != digest.get("bytes"):
            raise StoreError(f"{path}: size: expected {digest.get('bytes') if isinstance(digest, dict) else '?'} "
                             f"bytes (recorded in {where}), got {st.st_size}; not answering from it; "
                             f"run `actdb check {self.root}`")
        try:
            sha = sha256_file(Path(path), deadline)
        except TimeoutError:
            raise CheckTimeout(len(self._ok)) from None
        if sha != digest.get("sha256"):
            raise StoreError(f"{path}: sha256 differs from the one recorded in {where} (the file changed "
                             f"since it was written); not answering from it; run `actdb check {self.root}`")
        self._ok[path] = key

def _norm(path: str | Path) -> str:
    return os.path.normpath(os.path.abspath(str(path)))


def parquet_guard(store: Any, fresh: bool = False) -> ParquetGuard:
    """The guard of a store handle (a StoreReader), made on first use, or anew with fresh=True
    (the records read again: a connection made after a rebuild)."""
    guard = getattr(store, "_parquet_guard", None)
    if guard is None or fresh:
        guard = store._parquet_guard = ParquetGuard(store.path, store.checksum_records(), index_records(store))
    return guard


def index_records(store: Any) -> dict[Path, Any]:
    """{index folder: record} of every fire rule of a store handle; None where the index is missing,
    unfinished, damaged or built for another store (StoreError of index_info.bound_index_info)."""
    from .index_info import bound_index_info, index_path

    out: dict[Path, Any] = {}
    for rule in store.rules:
        base = rule_dir(store.path, rule)
        try:
            out[index_path(base)] = bound_index_info(store.path, base, store.manifest, rule)
        except StoreError:
            out[index_path(base)] = None
    return out


def _in_transient(path: str) -> bool:
    """Whether a path lies in one of actdb's folders of work in progress (store.layout.TRANSIENT)."""
    return not TRANSIENT.isdisjoint(Path(path).parts)


def _parquet_files(area: str) -> list[str]:
    """The Parquet files under a folder, links included but not followed (a glob's `**`
    follows linked folders, and a link back up makes that endless); not those of work in
    progress (an index rebuild beside the index), which no view reads."""
    out = []
    for d, dirs, files in os.walk(area):
        dirs[:] = [x for x in dirs if x not in TRANSIENT]
        out += [os.path.join(d, f) for f in files if f.endswith(".parquet")]
    return out
