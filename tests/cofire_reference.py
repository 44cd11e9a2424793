"""Co-firing by brute force: the masks as bool matrices, every n_both from one integer matrix
product, the measures written out again (docs/definitions.md, "Co-firing"), and the ranking."""
from __future__ import annotations

import numpy as np


def brute(x: np.ndarray):
    """x bool [neurons, rows] -> (n, fires, n_both [neurons, neurons], jaccard, p [a, b], phi), nan = NULL."""
    xi = x.astype(np.int64)
    n = x.shape[1]
    both = xi @ xi.T
    f = xi.sum(1)
    fa, fb = f[:, None], f[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        jac = np.where(fa + fb - both > 0, both / (fa + fb - both), np.nan)
        p = np.where(fa > 0, both / fa, np.nan)
        den = np.sqrt(fa.astype(float) * fb.astype(float) * (n - fa).astype(float) * (n - fb).astype(float))
        phi = np.where(den > 0, (n * both - fa * fb).astype(float) / den, np.nan)
    return n, f, both, jac, p, phi


def top(score_row: np.ndarray, exclude: int, k: int) -> list[int]:
    """Indices of the k largest non-NULL values, ties by index (the lower first), without `exclude`."""
    idx = [i for i in range(len(score_row)) if i != exclude and not np.isnan(score_row[i])]
    return sorted(idx, key=lambda i: (-score_row[i], i))[:k]
