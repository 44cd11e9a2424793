"""Compiled (numba) kernels of co-firing (cofire/counts.py), loaded by actdb.jit.compiled with the
index's switch (ACTDB_INDEX_JIT=0 keeps the numpy path, their reference, with the same integers).

pair_counts: n_AB for every pair of two sets of bit rows, popcount of AND over 64-bit words. A
2 x 2 tile of rows shares each word it loads between four counts, and LLVM vectorises the word
loop into AVX-512 VPOPCNTQ where the CPU has it (10 G word pairs/s per core here against 1.3 for
one pair at a time: benchmarks/RESULTS.md, "Co-firing").
sparse_counts: the same counts from each row's fired tokens and the other rows' fires listed by
token; its cost follows the co-firing pairs, so it takes the rows whose fires are few.
merge_topk: a tile of exact counts into each row's running top-k by phi, both scopes (the row's
own layer, and every layer) in one pass.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.cpython.unsafe.numbers import trailing_zeros
from numba.extending import intrinsic


@intrinsic
def _popcount(typingctx, x):  # pragma: no cover - compiled
    """LLVM's ctpop of a uint64 (numba has no popcount of its own)."""
    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])
    return types.uint64(types.uint64), codegen


WORDS = 256   # words of a row per pass: a 2 x 2 tile reads 4 x 2 KB, which stays in L1
ROWS = 64     # rows of b per pass (64 x 2 KB stay in L2 while every row pair of a goes by)


@njit(cache=True, nogil=True)
def pair_counts(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """out[i, j] += popcount(a[i] & b[j]) summed over the words; a [na, W], b [nb, W] uint64,
    out [na, nb] int64. Blocked so that b's rows are read from L2, not memory, by every row of a."""
    na, W = a.shape
    nb = b.shape[0]
    for w0 in range(0, W, WORDS):
        w1 = min(W, w0 + WORDS)
        for j0 in range(0, nb, ROWS):
            j1 = min(nb, j0 + ROWS)
            for i in range(0, na - 1, 2):
                a0 = a[i, w0:w1]
                a1 = a[i + 1, w0:w1]
                for j in range(j0, j1 - 1, 2):
                    b0 = b[j, w0:w1]
                    b1 = b[j + 1, w0:w1]
                    s00 = np.uint64(0)
                    s01 = np.uint64(0)
                    s10 = np.uint64(0)
                    s11 = np.uint64(0)
                    for w in range(w1 - w0):
                        x0 = a0[w]
                        x1 = a1[w]
                        y0 = b0[w]
                        y1 = b1[w]
                        s00 += _popcount(x0 & y0)
                        s01 += _popcount(x0 & y1)
                        s10 += _popcount(x1 & y0)
                        s11 += _popcount(x1 & y1)
                    out[i, j] += s00
                    out[i, j + 1] += s01
                    out[i + 1, j] += s10
                    out[i + 1, j + 1] += s11
                if (j1 - j0) % 2:
                    j = j1 - 1
                    s0 = np.uint64(0)
                    s1 = np.uint64(0)
                    for w in range(w0, w1):
                        s0 += _popcount(a[i, w] & b[j, w])
                        s1 += _popcount(a[i + 1, w] & b[j, w])
                    out[i, j] += s0
                    out[i + 1, j] += s1
        if na % 2:
            row_counts(a[na - 1, w0:w1], b[:, w0:w1], out[na - 1])


@njit(cache=True, nogil=True)
def row_counts(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """out[j] += popcount(a & b[j]) summed over the words; a [W], b [nb, W] uint64 (one neuron
    against many: two rows per pass share a's loads)."""
    nb, W = b.shape
    for j in range(0, nb - 1, 2):
        b0 = b[j]
        b1 = b[j + 1]
        s0 = np.uint64(0)
        s1 = np.uint64(0)
        for w in range(W):
            x = a[w]
            s0 += _popcount(x & b0[w])
            s1 += _popcount(x & b1[w])
        out[j] += s0
        out[j + 1] += s1
    if nb % 2:
        s = np.uint64(0)
        bl = b[nb - 1]
        for w in range(W):
            s += _popcount(a[w] & bl[w])
        out[nb - 1] += s


@njit(cache=True, nogil=True)
def token_lists(b: np.ndarray, n_rows: int):  # pragma: no cover - compiled
    """The fires of b [nb, W] uint64 listed by token row: (starts [n_rows + 1], cols): row t's
    firing rows of b are cols[starts[t]:starts[t + 1]], ascending."""
    nb, W = b.shape
    starts = np.zeros(n_rows + 1, np.int64)
    for j in range(nb):
        for w in range(W):
            x = b[j, w]
            while x:
                starts[w * 64 + np.int64(trailing_zeros(x)) + 1] += 1
                x &= x - np.uint64(1)
    for t in range(n_rows):
        starts[t + 1] += starts[t]
    cols = np.empty(starts[n_rows], np.int32)
    fill = starts[:n_rows].copy()
    for j in range(nb):
        for w in range(W):
            x = b[j, w]
            while x:
                t = w * 64 + np.int64(trailing_zeros(x))
                cols[fill[t]] = j
                fill[t] += 1
                x &= x - np.uint64(1)
    return starts, cols


@njit(cache=True, nogil=True)
def sparse_counts(a: np.ndarray, rows: np.ndarray, starts: np.ndarray, cols: np.ndarray,
                  out: np.ndarray) -> None:  # pragma: no cover - compiled
    """out[i, j] += the rows where a[i] and b[j] both fire, for each i in `rows`, from a's set
    bits and b's fires listed by token row (token_lists): its cost follows the pairs that co-fire,
    where pair_counts' follows every pair of words; for sparse neurons that is many times less.
    A row's increments go to a small int32 buffer that stays in L1, added to out[i] in one
    sequential pass (scattered into out's int64 row they missed the cache each time)."""
    acc = np.zeros(out.shape[1], np.int32)
    for r in range(rows.shape[0]):
        i = rows[r]
        for w in range(a.shape[1]):
            x = a[i, w]
            while x:
                t = w * 64 + np.int64(trailing_zeros(x))
                x &= x - np.uint64(1)
                for p in range(starts[t], starts[t + 1]):
                    acc[cols[p]] += 1
        oi = out[i]
        for j in range(acc.shape[0]):
            oi[j] += acc[j]
            acc[j] = 0


@njit(cache=True, nogil=True)
def row_popcounts(a: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """out[i] += the set bits of row i of a [n, W] uint64."""
    for i in range(a.shape[0]):
        s = np.uint64(0)
        for w in range(a.shape[1]):
            s += _popcount(a[i, w])
        out[i] += s


@njit(cache=True, nogil=True)
def phi_of(n: int, na: int, nb: int, c: int) -> float:  # pragma: no cover - compiled
    """phi of one pair, as counts.measures computes it (the same operations in the same order,
    so the same double); nan where a factor of the denominator is 0."""
    den = math.sqrt(float(na) * float(nb) * float(n - na) * float(n - nb))
    if den == 0.0:
        return math.nan
    return float(n * c - na * nb) / den


@njit(cache=True, nogil=True)
def _better(v: float, i: int, wv: float, wi: int) -> bool:  # pragma: no cover - compiled
    """(v, i) ranks before (wv, wi): a larger value, of equal values the lower id."""
    return v > wv or (v == wv and i < wi)


@njit(cache=True, nogil=True)
def _push(vals, ids, cnts, r: int, v: float, i: int, c: int) -> None:  # pragma: no cover - compiled
    """(v, i, c) into row r's sorted top list, dropping its last entry (the caller checked it ranks
    before that one)."""
    p = vals.shape[1] - 1
    while p > 0 and _better(v, i, vals[r, p - 1], ids[r, p - 1]):
        vals[r, p] = vals[r, p - 1]
        ids[r, p] = ids[r, p - 1]
        cnts[r, p] = cnts[r, p - 1]
        p -= 1
    vals[r, p] = v
    ids[r, p] = i
    cnts[r, p] = c


@njit(cache=True, nogil=True)
def merge_topk(counts: np.ndarray, transpose: bool, r0: int, r1: int, n: int,
               row_fires: np.ndarray, row_ids: np.ndarray, row_layer: np.ndarray,
               col_fires: np.ndarray, col_ids: np.ndarray, col_layer: np.ndarray,
               all_val: np.ndarray, all_id: np.ndarray, all_cnt: np.ndarray,
               own_val: np.ndarray, own_id: np.ndarray, own_cnt: np.ndarray) -> None:  # pragma: no cover - compiled
    """Rows r0..r1 of a tile of exact counts (counts[r, c], or counts[c, r] with transpose) into
    the running top lists by phi: *_val/_id/_cnt [rows, k] (-inf / -1 where empty), indexed by
    row_ids; `all` over every column, `own` over the columns of the row's layer. A pair is left out
    when it is the neuron itself or its phi is NULL (a dead or always-firing neuron). A fast
    bound (phi up to rounding, from per-neuron factors) passes over most pairs; the ones it
    admits are compared by the exact phi of phi_of. With transpose the columns are the outer loop,
    so counts is read along its rows either way; thr[r] keeps row r's two last values at hand."""
    k = all_val.shape[1]
    nc = col_fires.shape[0]
    inv = np.empty(nc, np.float64)
    for c in range(nc):
        f = col_fires[c]
        inv[c] = 1.0 / math.sqrt(float(f) * float(n - f)) if 0 < f < n else 0.0
    ia = np.zeros(r1, np.float64)
    thr = np.full((r1, 2), np.inf)   # a row that ranks nothing (dead, always firing) keeps inf: nothing passes
    for r in range(r0, r1):
        fa = row_fires[r]
        if 0 < fa < n:
            ia[r] = 1.0 / math.sqrt(float(fa) * float(n - fa))
            thr[r, 0] = all_val[row_ids[r], k - 1]
            thr[r, 1] = own_val[row_ids[r], k - 1]
    outer, inner = (nc, r1 - r0) if transpose else (r1 - r0, nc)
    for o in range(outer):
        for q in range(inner):
            if transpose:
                c, r = o, r0 + q
                cnt = counts[c, r]
            else:
                r, c = r0 + o, q
                cnt = counts[r, c]
            g = row_ids[r]
            if inv[c] == 0.0 or col_ids[c] == g:
                continue
            fa = row_fires[r]
            fb = col_fires[c]
            approx = float(n * cnt - fa * fb) * ia[r] * inv[c]
            same = col_layer[c] == row_layer[r]
            # the margin allows for the rounding of approx against the exact phi (a few ulps)
            if approx + 1e-9 < thr[r, 0] and not (same and approx + 1e-9 >= thr[r, 1]):
                continue
            v = phi_of(n, fa, fb, cnt)
            i = col_ids[c]
            if _better(v, i, all_val[g, k - 1], all_id[g, k - 1]):
                _push(all_val, all_id, all_cnt, g, v, i, cnt)
                thr[r, 0] = all_val[g, k - 1]
            if same and _better(v, i, own_val[g, k - 1], own_id[g, k - 1]):
                _push(own_val, own_id, own_cnt, g, v, i, cnt)
                thr[r, 1] = own_val[g, k - 1]
