"""Step 1 of the index: token arrays, n-gram ids and their distinct counts (docs/definitions.md).

An n-gram id is the base-B number of its slots, first to last, B = `base` = vocabulary + 1:
token ids are digits 0..B-2 and B-1 is PAD, the slot before the start of a sequence."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import StoreError
from ..store.layout import TOKENS_DIR, token_parts


class TokenArrays:
    """Per-row column ids of the count matrix, in index/_tmp/col_KEY.npy, read a block at a time
    (`block`) with positioned reads: never mapped, so what this process holds does not grow with the
    tokens (mapped pages of files read whole for every unit counted as its memory).

    Column layout: domains | positions | full-length positions (+ dump) | tokens (+ dump)
    [| bigrams (+ dump) | trigrams (+ dump) on n-gram layers].

    Built in two passes over the token parts, one part in memory at a time: memory follows
    the number of distinct n-grams (their ids and counts), not the number of tokens."""

    KEYS = ("domain", "pos", "pos_full", "token", "bigram", "trigram")

    def __init__(self, st, m, base: int, tmp: Path) -> None:
        import pyarrow.compute as pc

        self.parts = token_parts(st.path)
        bb = m.block_tokens
        if len(self.parts) != (m.n_tokens + bb - 1) // bb:
            raise StoreError(f"{st.path / TOKENS_DIR}: expected {(m.n_tokens + bb - 1) // bb} token parts, "
                             f"got {len(self.parts)}")
        T = m.seq_len
        if base**3 >= 2**63:   # trigram ids are int64 base-`base` numbers
            raise StoreError(f"{st.path}: expected a vocabulary under {2**21 - 1:,} tokens for int64 trigram ids, "
                             f"got {base - 1:,}")
        self.T, self.base, self.first = T, base, 1 if m.prefix_tokens else 0
        # pass 1: domains, full-length sequences (positional statistics), distinct n-grams with their counts
        domains: set[str] = set()
        full_seqs = []
        uniq = {name: DistinctCounter() for name in ("token", "bigram", "trigram")}
        self.n = 0
        st.verify_files(self.parts)   # each pass reads the parts checked against their records
        for t, pos, grams in self._parts():
            domains.update(pc.unique(t.column("domain").cast(pa.string())).to_pylist())
            full_seqs.append(t.column("seq").to_numpy()[pos == T - 1])
            for name, (key, valid) in grams.items():
                uniq[name].add(key[valid])
            self.n += t.num_rows
        self.domains = sorted(domains)   # sorted: the tables' domain order
        self._full = np.unique(np.concatenate(full_seqs)) if full_seqs else np.zeros(0, np.int64)
        self.uniq, self.counts = {}, {}
        for name, u in uniq.items():
            self.uniq[name], self.counts[name] = u.result()
        nd = len(self.domains)
        self.offsets = {"domain": 0, "pos": nd, "pos_full": nd + T}
        off = nd + T + T + 1
        for name in ("token", "bigram", "trigram"):
            self.offsets[name] = off
            off += len(self.uniq[name]) + 1   # + the dump column of excluded rows
            if name == "token":
                self.width_plain = off
        self.width_ngram = off
        # pass 2: each row's column ids, written part by part into the files (positioned writes)
        tmp.mkdir(parents=True, exist_ok=True)
        self.dtype = np.dtype(np.int32 if off < 2**31 else np.int64)
        self.tmp = tmp
        self._offsets = {k: reserve_npy(self._col_path(k), self.dtype, self.n) for k in self.KEYS}
        self._fds = self._open(os.O_WRONLY)
        self.pos_n = np.zeros(T, np.int64)
        self.pos_full_n = np.zeros(T, np.int64)
        dom_set = pa.array(self.domains, pa.string())
        r0 = 0
        st.verify_files(self.parts)   # each pass reads the parts checked against their records
        try:
            for t, pos, grams in self._parts():
                r1 = r0 + t.num_rows
                full = np.isin(t.column("seq").to_numpy(), self._full)
                self.pos_n += np.bincount(pos, minlength=T)
                self.pos_full_n += np.bincount(pos[full], minlength=T)
                self._write("domain", r0, pc.index_in(t.column("domain").cast(pa.string()), value_set=dom_set).to_numpy())
                self._write("pos", r0, pos + nd)
                self._write("pos_full", r0, np.where(full, pos, T) + nd + T)
                for name, (key, valid) in grams.items():
                    u = self.uniq[name]
                    local = np.full(len(key), len(u), np.int64)   # dump column for excluded rows
                    local[valid] = np.searchsorted(u, key[valid])
                    self._write(name, r0, local + self.offsets[name])
                r0 = r1
        finally:
            self.close()
        self._fds = self._open(os.O_RDONLY)   # opened here, so the units' threads only read

    def _col_path(self, key: str) -> Path:
        return self.tmp / f"col_{key}.npy"

    def _open(self, flags: int) -> dict[str, int]:
        return {k: os.open(self._col_path(k), flags) for k in self.KEYS}

    def _write(self, key: str, r0: int, values: np.ndarray) -> None:
        data = memoryview(np.ascontiguousarray(values, self.dtype)).cast("B")
        at, fd = self._offsets[key] + r0 * self.dtype.itemsize, self._fds[key]
        while data:   # a positioned write may write less than asked
            n = os.pwrite(fd, data, at)
            data, at = data[n:], at + n

    def block(self, keys: tuple[str, ...], s0: int, s1: int) -> np.ndarray:
        """[len(keys), s1 - s0] column ids of rows s0..s1 (a new array; safe from any thread)."""
        out = np.empty((len(keys), s1 - s0), self.dtype)
        for i, k in enumerate(keys):
            buf, at = memoryview(out[i]).cast("B"), self._offsets[k] + s0 * self.dtype.itemsize
            while buf:
                got = os.preadv(self._fds[k], [buf], at)
                if got <= 0:
                    raise StoreError(f"{self._col_path(k)}: expected {s1 - s0} values from row {s0}, the file is short")
                buf, at = buf[got:], at + got
        return out

    def column(self, key: str) -> np.ndarray:
        """Every row's column id of `key` (tests: a whole-corpus array)."""
        return self.block((key,), 0, self.n)[0]

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    # pickled for a Ray task (index/ray_index.py) without the open files, which it opens again
    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_fds"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._fds = self._open(os.O_RDONLY)

    def _parts(self):
        """(table, pos, {n-gram: (ids, valid)}) per token part, in row order; the previous two tokens
        carry over part boundaries. A slot before the sequence start (pos - j < 0) is the PAD digit,
        so every n counts the same rows: all but the BOS position (docs/definitions.md)."""
        prev = np.array([-1, -1], np.int64)
        base, first = self.base, self.first
        pad = base - 1
        for p in self.parts:
            t = pq.read_table(p, columns=["seq", "pos", "token_id", "domain"])
            pos = t.column("pos").to_numpy().astype(np.int64)
            tid = t.column("token_id").to_numpy().astype(np.int64)
            ext = np.r_[prev, tid]
            p1 = np.where(pos >= 1, ext[1:-1], pad)   # from pos, so a slot never reaches the previous sequence
            p2 = np.where(pos >= 2, ext[:-2], pad)
            prev = ext[-2:]
            valid = pos >= first
            yield t, pos, {"token": (tid, valid), "bigram": (p1 * base + tid, valid),
                           "trigram": ((p2 * base + p1) * base + tid, valid)}

    def keys(self, ngram: bool) -> tuple[str, ...]:
        return self.KEYS if ngram else self.KEYS[:4]

    def width(self, ngram: bool) -> int:
        return self.width_ngram if ngram else self.width_plain


def reserve_npy(path: Path, dtype: np.dtype, n: int) -> int:
    """A new .npy file of n values (a header, then the data), its disk space reserved first, so a
    full disk is an OSError naming the file here (one line, see index/build.py) and not halfway
    through; returns the data's byte offset."""
    dtype = np.dtype(dtype)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                 "fortran_order": False, "shape": (n,)})
        offset = f.tell()
        size = offset + n * dtype.itemsize
        f.truncate(size)
        if hasattr(os, "posix_fallocate"):   # no such call (macOS): written as it goes
            try:
                os.posix_fallocate(f.fileno(), 0, size)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):   # else a file system that cannot reserve
                    raise OSError(e.errno, e.strerror, str(path)) from None
    return offset


class DistinctCounter:
    """Distinct int64 keys with their counts, fed a part at a time: parts are reduced on arrival,
    and once MERGE_AT keys wait they are merged into the sorted set in one linear pass (no sort of
    the whole set), so memory follows the distinct keys plus a bounded batch."""

    MERGE_AT = 1 << 20   # pending keys merged at once

    def __init__(self) -> None:
        self.keys, self.counts = np.zeros(0, np.int64), np.zeros(0, np.int64)
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.n_pending = 0

    def add(self, keys: np.ndarray) -> None:
        u, c = np.unique(keys, return_counts=True)
        self.pending.append((u, c.astype(np.int64)))
        self.n_pending += len(u)
        if self.n_pending >= self.MERGE_AT:
            self._merge()

    def _merge(self) -> None:
        if not self.pending:
            return
        k, inv = np.unique(np.concatenate([u for u, _ in self.pending]), return_inverse=True)
        c = np.bincount(inv, weights=np.concatenate([c for _, c in self.pending]), minlength=len(k)).astype(np.int64)
        self.pending, self.n_pending = [], 0
        at = np.searchsorted(self.keys, k)
        old = at < len(self.keys)
        old[old] = self.keys[at[old]] == k[old]
        self.counts[at[old]] += c[old]          # k is distinct, so are these positions
        new = ~old
        # sorted new keys at nondecreasing positions: the result stays sorted
        self.keys = np.insert(self.keys, at[new], k[new])
        self.counts = np.insert(self.counts, at[new], c[new])

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        self._merge()
        return self.keys, self.counts
