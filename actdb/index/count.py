"""Step 2 of the index: exact counts of one (layer, neuron chunk) unit over all tokens."""
from __future__ import annotations

import numpy as np

from ..store.bits import unpack
from .tokens import TokenArrays


def chunk_size(width: int, d_ffn: int, store_chunk: int, memory_mb: float, cap: int | None) -> int:
    """Neurons per unit: 20 bytes per (neuron, column) cell (int32 counts, int64 tally buffer and
    bincount result) must fit the budget."""
    ch = int(memory_mb * 2**20 // (20 * width))
    ch = max(1, min(d_ffn, ch, cap or d_ffn))
    if ch >= store_chunk:            # whole Zarr chunks: each is decompressed once per unit
        ch -= ch % store_chunk
    return ch


def count_unit(arr, tok: TokenArrays, n0: int, n1: int, ngram: bool, block: int) -> np.ndarray:
    """Exact counts [n1-n0, width] of one neuron chunk over all tokens."""
    ch, W = n1 - n0, tok.width(ngram)
    keys = tok.keys(ngram)
    cells = ch * W
    counts = np.zeros(cells, np.int32 if tok.n < 2**31 else np.int64)  # a cell counts at most n tokens
    buf = np.empty(max(cells, 1 << 16), np.int64)   # flat (neuron, column) ids waiting for a bincount
    used = 0
    # rows per slice so that one slice's tallies always fit an empty buffer
    step = max(8, (len(buf) // (ch * len(keys))) // 8 * 8)
    for s0 in range(0, tok.n, block):
        s1 = min(tok.n, s0 + block)
        raw = np.asarray(arr[n0:n1, s0 // 8:(s1 + 7) // 8])
        for a in range(s0, s1, step):
            b = min(s1, a + step)
            m = unpack(raw[:, (a - s0) // 8:(b - s0 + 7) // 8], b - a, 0)
            ni, ri = np.nonzero(m)
            f = len(ni)
            if not f:
                continue
            if used + f * len(keys) > len(buf):
                counts += np.bincount(buf[:used], minlength=cells)
                used = 0
            base = ni * W
            for k in keys:
                col = np.asarray(tok.cols[k][a:b])
                np.add(base, col[ri], out=buf[used:used + f])
                used += f
    if used:
        counts += np.bincount(buf[:used], minlength=cells)
    return counts.reshape(ch, W)
