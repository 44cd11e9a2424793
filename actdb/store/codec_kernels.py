"""Compiled (numba) kernels of the `actdb.bitrows` codec (codec.py): the Rice coding and
decoding of a group's rows in passes over 64-bit words, where the numpy path builds arrays
of every fire, gap and unary bit. Output and checks are those of the numpy path, bit for
bit (tests/test_codec.py compares the two); codec.py falls back to numpy without numba.

Bits are little-endian within a byte everywhere (bit i of byte j is bit 8j + i), so a
stream read as little-endian uint64 words keeps bit i of word w at bit 64w + i.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.cpython.unsafe.numbers import trailing_zeros
from numba.extending import intrinsic

# decode errors (codec.py turns them into its one-line messages)
OK, UNARY_SHORT, OUTSIDE_ROW, REM_SHORT, CODES_EXTRA, BAD_MODE, BAD_GROUPS, OUTSIDE_GROUPS, TRUNCATED = range(9)
_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)


@intrinsic
def _popcount(typingctx, src):  # pragma: no cover - compiled
    """The set bits of an integer (LLVM's ctpop: one instruction where the CPU has it)."""
    if not isinstance(src, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])
    return src(src), codegen


@intrinsic
def _load_u64(typingctx, arr, idx):  # pragma: no cover - compiled
    """The little-endian uint64 at byte idx of a uint8 array, unaligned (the caller keeps
    idx + 8 within the array)."""
    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), ir.IntType(64).as_pointer())
        return builder.load(ptr, align=1)
    return types.uint64(arr, types.intp), codegen


def chunk_words(chunk: np.ndarray) -> np.ndarray:
    """uint8 [R, B] -> little-endian uint64 [R, ceil(B / 8)], zero-padded (a view when B % 8 == 0)."""
    R, B = chunk.shape
    if B % 8 == 0:
        return chunk.view(np.uint64)
    out = np.zeros((R, (B + 7) // 8 * 8), np.uint8)
    out[:, :B] = chunk
    return out.view(np.uint64)


@njit(cache=True, nogil=True)
def row_counts(chunk64):  # pragma: no cover - compiled
    """Set bits per row of chunk_words() (its zero padding counts nothing)."""
    out = np.zeros(chunk64.shape[0], np.int64)
    for r in range(chunk64.shape[0]):
        c = 0
        for j in range(chunk64.shape[1]):
            c += np.int64(_popcount(chunk64[r, j]))
        out[r] = c
    return out


@njit(cache=True, nogil=True)
def rice_rows(chunk64, B, rows, inv, kr, rem_start, unary, rem, n11, u_at):  # pragma: no cover - compiled
    """One pass over the rows to be Rice-coded (ZEROS rows inverted; chunk64: chunk_words() of a
    chunk B bytes wide): per listed bit, its gap (bits skipped since the row's previous listed
    bit) goes to the unary stream (gap >> k zero bits, then a one; rows in order) and its low k
    bits to the remainder stream at the row's rem_start; both zeroed uint64 word streams.
    n11[i] = zero gaps after the row's first listed bit; u_at[i] = where row i's unary codes
    start (u_at[rows.size]: the stream's length in bits; a row's length is the sum of its
    gap >> k, plus one bit per code). Both streams are built in a register word, stored once
    per 64 bits."""
    W = chunk64.shape[1]
    tail = _ALL if B % 8 == 0 else (np.uint64(1) << np.uint64(8 * (B % 8))) - np.uint64(1)
    pos = np.empty(64 * W + 8, np.int32)         # one row's listed bits (slack for the unrolled writes)
    uw, us, uacc = 0, 0, np.uint64(0)          # unary: word index, bits used in it, its bits
    for i in range(rows.size):
        r, k = rows[i], kr[i]
        u_at[i] = 64 * uw + us
        m = _listed_bits(chunk64[r], _ALL if inv[i] else np.uint64(0), tail, pos)
        mask = (1 << k) - 1
        rw, rs, racc = rem_start[i] >> 6, rem_start[i] & 63, np.uint64(0)   # remainder: the same
        prev, z = -1, 0
        for t in range(m):
            p = np.int64(pos[t])
            gap = p - prev - 1
            prev = p
            z += gap == 0
            q = gap >> k
            us += q
            if us >= 64:   # the zero bits fill this word (and maybe more): store it, skip the rest
                unary[uw] = uacc
                uw += us >> 6
                us &= 63
                uacc = np.uint64(0)
            uacc |= np.uint64(1) << np.uint64(us)
            us += 1
            if us == 64:
                unary[uw] = uacc
                uw += 1
                us = 0
                uacc = np.uint64(0)
            if k:
                v = np.uint64(gap & mask)
                racc |= v << np.uint64(rs)
                rs += k
                if rs >= 64:
                    rem[rw] |= racc
                    rw += 1
                    rs -= 64
                    racc = v >> np.uint64(k - rs) if rs else np.uint64(0)
        if rs:
            rem[rw] |= racc   # rows share boundary words: every store is an OR into the zeroed stream
        n11[i] = z - (m > 0 and pos[0] == 0)   # the first listed bit follows no other
    if us:
        unary[uw] = uacc
    u_at[rows.size] = 64 * uw + us


@njit(cache=True, nogil=True, inline="always")
def _listed_bits(row64, x, tail, pos):  # pragma: no cover - compiled
    """The set bits of row64 ^ x (its last word masked by tail) into pos, ascending; returns how
    many. Four writes per word are unconditional (pos has slack), so a word with up to four set
    bits takes no data-dependent branch: mispredicted loop exits, one per word, were most of the
    encoder's time at a few percent firing."""
    W, m = row64.size, 0
    for j in range(W):
        w = row64[j] ^ x
        if j == W - 1:
            w &= tail   # padding past the row's last byte lists nothing, inverted or not
        if w == 0:
            continue
        base = np.int32(64 * j)
        cnt = np.int64(_popcount(w))
        pos[m] = base + np.int32(trailing_zeros(w))
        w &= w - np.uint64(1)
        pos[m + 1] = base + np.int32(trailing_zeros(w))
        w &= w - np.uint64(1)
        pos[m + 2] = base + np.int32(trailing_zeros(w))
        w &= w - np.uint64(1)
        pos[m + 3] = base + np.int32(trailing_zeros(w))
        w &= w - np.uint64(1)
        t = m + 4
        while w:
            pos[t] = base + np.int32(trailing_zeros(w))
            w &= w - np.uint64(1)
            t += 1
        m += cnt
    return m


@njit(cache=True, nogil=True)
def copy_bits(src, starts, lens, dst):  # pragma: no cover - compiled
    """Bit segments [starts[i], starts[i] + lens[i]) of the uint64 word stream src, one after
    the other from bit 0 of dst (zeroed; src has a zero word past its last bit). Returns the
    bits written."""
    d = 0
    for i in range(starts.size):
        a, left = starts[i], lens[i]
        while left > 0:
            aw, ab = a >> 6, np.uint64(a & 63)
            v = src[aw] >> ab
            if ab:
                v |= src[aw + 1] << (np.uint64(64) - ab)
            nb = min(left, 64)
            if nb < 64:
                v &= (np.uint64(1) << np.uint64(nb)) - np.uint64(1)
            dw, db = d >> 6, np.uint64(d & 63)
            dst[dw] |= v << db
            if db and np.int64(db) + nb > 64:
                dst[dw + 1] |= v >> (np.uint64(64) - db)
            a += nb
            d += nb
            left -= nb
    return d


@njit(cache=True, nogil=True, inline="always")
def _window(buf, lo, hi, p):  # pragma: no cover - compiled
    """(bits of the byte stream buf[lo:hi] from bit p on, how many of them are real: 57-64, fewer
    at the stream's end); bits past the end read as zero."""
    i = lo + (p >> 3)
    w = np.uint64(0)
    if i + 8 <= hi:
        return _load_u64(buf, i) >> np.uint64(p & 7), 64 - (p & 7)
    for t in range(max(0, hi - i)):
        w |= np.uint64(buf[i + t]) << np.uint64(8 * t)
    return w >> np.uint64(p & 7), 8 * (hi - i) - (p & 7)


@njit(cache=True, nogil=True)
def _skip_codes(buf, lo, hi, t):  # pragma: no cover - compiled
    """Bit position (from byte lo) just past the t-th one of the byte stream buf[lo:hi] (0 for
    t = 0), or -1."""
    if t == 0:
        return 0
    seen = 0
    for j in range(lo, hi):
        c = np.int64(_popcount(buf[j]))
        if seen + c >= t:
            b = np.int64(buf[j])
            while True:
                seen += 1
                if seen == t:
                    return 8 * (j - lo) + np.int64(trailing_zeros(b)) + 1
                b &= b - 1
        seen += c
    return -1


@njit(cache=True, nogil=True)
def _decode_rows(buf, u0, u1, r0, r1, n, kr, bit_start, j0, j1, n_bits, inv, dest, out):  # pragma: no cover - compiled
    """Coded rows j0..j1 of a group into out[dest[j]] (packed bytes, zeroed), ZEROS rows (inv[j])
    inverted; buf[u0:u1] is the group's unary stream, buf[r0:r1] its remainder stream. Returns an
    error code (OK, UNARY_SHORT, OUTSIDE_ROW)."""
    t0 = 0
    for j in range(j0):
        t0 += n[j]
    p = _skip_codes(buf, u0, u1, t0)
    if p < 0:
        return UNARY_SHORT
    for j in range(j0, j1):
        k, rp, pos = kr[j], bit_start[j], -1
        mask = np.uint64((1 << k) - 1)
        row = out[dest[j]]
        for _ in range(n[j]):
            q = 0
            while True:   # the next one bit of the unary stream
                w, real = _window(buf, u0, u1, p)
                if real <= 0:
                    return UNARY_SHORT
                if w == 0:
                    q += real
                    p += real
                else:
                    tz = np.int64(trailing_zeros(w))
                    q += tz
                    p += tz + 1
                    break
            r = 0
            if k:
                w, real = _window(buf, r0, r1, rp)
                r = np.int64(w & mask)
            rp += k
            pos += ((q << k) | r) + 1
            if pos >= n_bits:
                return OUTSIDE_ROW
            row[pos >> 3] |= np.uint8(1 << (pos & 7))
        if inv[j]:
            for c in range(row.size):
                row[c] = ~row[c]
    return OK


@njit(cache=True, nogil=True)
def decode_groups(buf, o, ub, rb, end_row, mode, coded, k, r0, r1, n_bits, out):  # pragma: no cover - compiled
    """The Rice-coded rows among r0..r1 of a chunk into out[row - r0] (zeroed); the group
    streams start at byte o of buf. Returns (error, group): OK, UNARY_SHORT, OUTSIDE_ROW,
    REM_SHORT or CODES_EXTRA (a whole group read: its unary stream lists more codes)."""
    first = 0
    for g in range(end_row.size):
        u0, r_at = o, o + ub[g]
        o = r_at + rb[g]
        last, lo = end_row[g], first
        first = last
        if last <= r0 or lo >= r1:
            continue
        m = 0
        for r in range(lo, last):
            if (mode[r] == 1 or mode[r] == 2) and coded[r] > 0:
                m += 1
        n = np.empty(m, np.int64)
        kr = np.empty(m, np.int64)
        inv = np.empty(m, np.bool_)
        dest = np.empty(m, np.int64)
        by_k = np.zeros(32, np.int64)
        j0, j1, m = -1, 0, 0
        for r in range(lo, last):
            if (mode[r] == 1 or mode[r] == 2) and coded[r] > 0:
                n[m], kr[m], inv[m], dest[m] = coded[r], k[r], mode[r] == 2, r - r0
                by_k[k[r]] += coded[r] * k[r]
                if r0 <= r < r1:
                    if j0 < 0:
                        j0 = m
                    j1 = m + 1
                m += 1
        if j0 < 0:
            continue
        # remainder fields: rows grouped by k ascending, in order within a k (a counting sort)
        base, total = np.zeros(32, np.int64), 0
        for kv in range(32):
            base[kv] = total
            total += by_k[kv]
        if total > 8 * rb[g]:
            return REM_SHORT, g
        bit_start = np.empty(m, np.int64)
        for j in range(m):
            bit_start[j] = base[kr[j]]
            base[kr[j]] += n[j] * kr[j]
        err = _decode_rows(buf, u0, r_at, r_at, o, n, kr, bit_start, j0, j1, n_bits, inv, dest, out)
        if err != OK:
            return err, g
        if j0 == 0 and j1 == m:
            ones = 0
            for j in range(u0, r_at):
                ones += np.int64(_popcount(buf[j]))
            if ones != n.sum():
                return CODES_EXTRA, g
    return OK, -1


@njit(cache=True, nogil=True)
def decode_chunk(buf, o, R, B, mode, k, coded, end_row, ub, rb, r0, r1, out):  # pragma: no cover - compiled
    """Header checks, then decode_groups and the rows that always fire, into out (zeroed); RAW
    rows are left to the caller. Returns (error, group, value): BAD_MODE, BAD_GROUPS,
    OUTSIDE_GROUPS, TRUNCATED (value: bytes needed) or decode_groups' errors."""
    for r in range(R):
        if mode[r] > 3 or k[r] > 30:
            return BAD_MODE, -1, 0
    G = end_row.size
    for g in range(G):
        if end_row[g] < 1 or end_row[g] > R or (g and end_row[g] <= end_row[g - 1]):
            return BAD_GROUPS, g, 0
    last = end_row[G - 1] if G else 0
    for r in range(last, R):
        if (mode[r] == 1 or mode[r] == 2) and coded[r] > 0:
            return OUTSIDE_GROUPS, -1, 0
    need = o
    for g in range(G):
        need += ub[g] + rb[g]
    if need > buf.size:
        return TRUNCATED, -1, need
    err, g = decode_groups(buf, o, ub.astype(np.int64), rb.astype(np.int64), end_row.astype(np.int64), mode,
                           coded.astype(np.int64), k.astype(np.int64), r0, r1, 8 * B, out)
    if err != OK:
        return err, g, 0
    for r in range(r0, r1):
        if mode[r] == 2 and coded[r] == 0:   # rows that always fire
            out[r - r0, :] = 0xFF
    return OK, -1, need
