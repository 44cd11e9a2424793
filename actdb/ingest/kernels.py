"""Compiled (numba) kernels of the ingest hooks on CPU, one call each where torch made several
small parallel ops (each an OpenMP fork and join; under load or beside the writer thread those
cost more than the work: benchmarks/RESULTS.md, "the encoder's second pass"). Loaded by packing.compiled().

pack_bytes: fire bits packed 8 rows to a byte, bit for bit those of packing.pack_rows.
pack_positive: the sign rule's bits (act > 0) packed straight from the values, neuron-major, as
pack_rows(act > 0) gives them: one pass where the compare, the packing and the transpose were three.
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


@njit(cache=True, nogil=True)
def pack_positive(x: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """x: [n, d] float32 values, n a multiple of 8 -> out [d, n/8] uint8: bit b of out[f, g] says
    x[8g + b, f] > 0 (NaN is not: the IEEE compare, as torch's). For eight bytes g0..g0+7 at a time
    the bytes are made along contiguous rows of x into a scratch [8, d] (vectorized over f), then
    turned neuron-major eight neurons at a time, an 8 x 8 byte transpose in registers (_transpose8),
    where out's rows take whole 8-byte words (n a multiple of 64), else byte by byte. The words are
    read and written through uint64 views of byte arrays: little-endian hosts (x86-64, arm64), as
    torch's CPU builds are; the test against compare-then-pack would show otherwise."""
    d, groups = out.shape
    dw = (d + 7) // 8
    tmp = np.zeros((8, 8 * dw), np.uint8)
    tw = tmp.view(np.uint64)                                   # [8, dw]: eight bytes of one scratch row
    w = np.empty(8, np.uint64)
    words = groups % 8 == 0
    ow = out.view(np.uint64) if words else tw                  # [d, groups/8] when used
    for g0 in range(0, groups, 8):
        qn = min(8, groups - g0)
        for q in range(qn):
            r = 8 * (g0 + q)
            for f in range(d):
                tmp[q, f] = (np.uint8(x[r, f] > 0) | (np.uint8(x[r + 1, f] > 0) << 1)
                             | (np.uint8(x[r + 2, f] > 0) << 2) | (np.uint8(x[r + 3, f] > 0) << 3)
                             | (np.uint8(x[r + 4, f] > 0) << 4) | (np.uint8(x[r + 5, f] > 0) << 5)
                             | (np.uint8(x[r + 6, f] > 0) << 6) | (np.uint8(x[r + 7, f] > 0) << 7))
        if not words:
            for f in range(d):
                for q in range(qn):
                    out[f, g0 + q] = tmp[q, f]
            continue
        for c in range(dw):
            for q in range(8):
                w[q] = tw[q, c]
            _transpose8(w)
            for k in range(min(8, d - 8 * c)):
                ow[8 * c + k, g0 // 8] = w[k]


@njit(cache=True, nogil=True)
def _transpose8(w: np.ndarray) -> None:  # pragma: no cover - compiled
    """w: 8 uint64 words, an 8 x 8 byte matrix (byte k of word q: row q, column k) -> transposed in
    place: three rounds swapping 1-, 2-, then 4-byte blocks between word pairs."""
    for span, mask, pairs in ((np.uint64(8), np.uint64(0x00FF00FF00FF00FF), (0, 2, 4, 6)),
                              (np.uint64(16), np.uint64(0x0000FFFF0000FFFF), (0, 1, 4, 5)),
                              (np.uint64(32), np.uint64(0x00000000FFFFFFFF), (0, 1, 2, 3))):
        step = int(span) // 8
        for a in pairs:
            t = ((w[a] >> span) ^ w[a + step]) & mask
            w[a + step] ^= t
            w[a] ^= t << span
