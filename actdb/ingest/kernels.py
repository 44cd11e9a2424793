"""Compiled (numba) kernels of the ingest hooks on CPU, one call each where torch made several
small parallel ops (each an OpenMP fork and join; under load or beside the writer thread those
cost more than the work: benchmarks/RESULTS.md, "the encoder's second pass"). Loaded by packing.compiled().

pack_bytes: fire bits packed 8 rows to a byte, bit for bit those of packing.pack_rows.
row_topk (capture.magnitude_stats): |h| and the top-k by |h| of each token row in one pass.
Values equal torch.topk's; among values tied in |h| the lower dimension comes first (torch
leaves the order of ties unspecified, and its order differs from this one, e.g. among the
zeros of a ReLU row with fewer than k positives). A row holding a NaN is reported, and the
caller then uses the torch path, whose NaN answers (torch.topk, torch.median) these are not.
The medians stay with numpy's partition, which is SIMD and 8x faster than a scalar quickselect.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def row_topk(h: np.ndarray, a: np.ndarray, vals: np.ndarray, dims: np.ndarray) -> bool:  # pragma: no cover - compiled
    """Each row r of h [rows, d] float32: a[r] = |h[r]|, vals/dims [rows, k] the signed h and
    dimensions of the k largest |h| (descending; ties: lower dimension first). Returns whether
    any row holds a NaN."""
    d = h.shape[1]
    k = vals.shape[1]
    tv = np.empty(k, np.float32)
    ti = np.empty(k, np.int32)
    nan = False
    for r in range(h.shape[0]):
        row, ar = h[r], a[r]
        cnt = 0
        for j in range(d):
            v = abs(row[j])
            ar[j] = v
            if v != v:
                nan = True
            # insertion into the running top-k; strict > keeps the earlier of equal values first
            if cnt < k or v > tv[cnt - 1]:
                p = cnt if cnt < k else k - 1
                while p > 0 and v > tv[p - 1]:
                    tv[p] = tv[p - 1]
                    ti[p] = ti[p - 1]
                    p -= 1
                tv[p] = v
                ti[p] = j
                if cnt < k:
                    cnt += 1
        for t in range(k):
            dims[r, t] = ti[t]
            vals[r, t] = row[ti[t]]
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
