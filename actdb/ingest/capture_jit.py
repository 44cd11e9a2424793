"""Compiled (numba) kernel of the magnitude capture on CPU (capture.magnitude_stats): |h| and
the top-k by |h| of each token row in one pass over the row, where torch made two (abs, topk)
on both cores for twice the CPU. The medians stay with numpy's partition, which is SIMD and
8x faster than a scalar quickselect here.

Values equal torch.topk's; among values tied in |h| the lower dimension comes first (torch
leaves the order of ties unspecified, and its order differs from this one, e.g. among the
zeros of a ReLU row with fewer than k positives). A row holding a NaN is reported, and the
caller then uses the torch path, whose NaN answers (torch.topk, torch.median) these are not.
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
