"""Compiled (numba) kernels of the ingest hooks on CPU, one call each where torch made several
small parallel ops (each an OpenMP fork and join; under load or beside the writer thread those
cost more than the work: benchmarks/RESULTS.md, "the encoder's second pass"). Loaded by packing.compiled().

pack_bytes: fire bits packed 8 rows to a byte, bit for bit those of packing.pack_rows.
row_topk (capture.magnitude_stats): |h| and the top-k by |h| of each token row, in one
vectorized pass and a scan of the few blocks that can hold the top-k.
Values equal torch.topk's; among values tied in |h| the lower dimension comes first (torch
leaves the order of ties unspecified, and its order differs from this one, e.g. among the
zeros of a ReLU row with fewer than k positives). A row holding a NaN is reported, and the
caller then uses the torch path, whose NaN answers (torch.topk, torch.median) these are not.
The medians stay with numpy's partition, which is SIMD and 8x faster than a scalar quickselect.
"""
from __future__ import annotations

import numpy as np
from numba import njit


TOPK_BLOCK = 32   # elements a block maximum of row_topk covers (16-64 ran within 5 % on SmolLM2's rows)


def row_topk(h: np.ndarray, a: np.ndarray, vals: np.ndarray, dims: np.ndarray) -> bool:
    """Each row r of h [rows, d] float32: a[r] = |h[r]|, vals/dims [rows, k] the signed h and
    dimensions of the k largest |h| (descending; ties: lower dimension first). Returns whether
    any row holds a NaN. h, a, vals C-contiguous; a and vals are written."""
    hb, ab = h.view(np.int32), a.view(np.int32)
    return _row_topk(hb, ab, _blocks(hb), _blocks(ab), vals.view(np.int32), dims)


def _blocks(x: np.ndarray) -> np.ndarray:
    """[rows, d] -> a view [rows, d // TOPK_BLOCK, TOPK_BLOCK] of each row's whole blocks: loops over
    a constant inner axis are what LLVM vectorizes (over a row's flat index they stayed scalar)."""
    n, d = x.shape
    return np.lib.stride_tricks.as_strided(x, (n, d // TOPK_BLOCK, TOPK_BLOCK),
                                           (x.strides[0], TOPK_BLOCK * x.itemsize, x.itemsize))


@njit(cache=True, nogil=True)
def _row_topk(h, a, h3, a3, vals, dims):  # pragma: no cover - compiled
    """row_topk on the int32 bits of h and a ([rows, d]; h3/a3 their whole blocks, _blocks), and of
    vals. |h| is h's bits without the sign bit; non-negative floats order as their bits, NaN's above
    +inf's. One vectorized pass writes |h| and each block's maximum; the k-th largest block maximum
    is a floor under the k-th largest |h| (k elements reach it), so only blocks whose maximum reaches
    it are scanned, in dimension order, by insertion into the running top-k (2.4x faster than
    inserting every element on SmolLM2's residual rows; benchmarks/RESULTS.md)."""
    n, d = h.shape
    nb, w = h3.shape[1], h3.shape[2]
    k = vals.shape[1]
    nbt = nb + (1 if d > nb * w else 0)   # a last partial block
    bm = np.empty(nbt, np.int32)
    top = np.empty(k, np.int32)
    tv = np.empty(k, np.int32)
    ti = np.empty(k, np.int32)
    nan = False
    for r in range(n):
        for c in range(nb):
            m = 0
            for j in range(w):
                b = h3[r, c, j] & 0x7fffffff
                a3[r, c, j] = b
                m = max(m, b)
            bm[c] = m
        if nbt > nb:
            m = 0
            for j in range(nb * w, d):
                b = h[r, j] & 0x7fffffff
                a[r, j] = b
                m = max(m, b)
            bm[nb] = m
        # the k largest block maxima, by insertion (descending)
        for q in range(k):
            top[q] = -1
        for c in range(nbt):
            v = bm[c]
            if v > top[k - 1]:
                p = k - 1
                while p > 0 and v > top[p - 1]:
                    top[p] = top[p - 1]
                    p -= 1
                top[p] = v
        if top[0] > 0x7f800000:
            nan = True
        floor = top[k - 1] if nbt >= k else 0
        cnt = 0
        for c in range(nbt):
            if bm[c] < floor:
                continue
            for j in range(c * w, min(c * w + w, d)):
                v = a[r, j]
                # strict > keeps the earlier of equal values first
                if v >= floor and (cnt < k or v > tv[cnt - 1]):
                    p = cnt if cnt < k else k - 1
                    while p > 0 and v > tv[p - 1]:
                        tv[p] = tv[p - 1]
                        ti[p] = ti[p - 1]
                        p -= 1
                    tv[p] = v
                    ti[p] = j
                    if cnt < k:
                        cnt += 1
        for q in range(k):
            dims[r, q] = ti[q]
            vals[r, q] = h[r, ti[q]]
    return nan


@njit(cache=True, nogil=True)
def pack_bytes(x: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """x: [n, d] uint8 of 0/1 (a bool array's bytes), n a multiple of 8 -> out [n/8, d]:
    bit b of out[g, f] = x[8g + b, f] (little-endian bit order), token-major like x, so
    both are read and written along contiguous rows."""
    for g in range(out.shape[0]):
        r = 8 * g
        for f in range(x.shape[1]):
            out[g, f] = (x[r, f] | (x[r + 1, f] << 1) | (x[r + 2, f] << 2) | (x[r + 3, f] << 3) | (x[r + 4, f] << 4)
                         | (x[r + 5, f] << 5) | (x[r + 6, f] << 6) | (x[r + 7, f] << 7))
