"""Compiled (numba) kernels of the index on CPU, loaded by actdb.jit.compiled;
ACTDB_INDEX_JIT=0 keeps the numpy and torch paths, the references these are tested against
(tests/test_index_kernels.py), and the results are the same integers, cell for cell.

count_fires (count.py): a mask block's fires tallied straight into the unit's counts, one pass
over each neuron's set bits: its cost follows the fires at any fire rate, with no coordinate
arrays (the numpy path) and no float [tokens, neurons] copy of the block (the torch path).
segment_stats_rows (stats.py): a row's total, distinct n-grams, coverage at p and top-k from a
histogram of its counts (a counting sort: most counts are small), where numpy sorts the row.
top_bottom_k (projection.py): the k largest and k smallest scores of each row in one pass,
on one core (torch.topk's thread pool, spinning after each call, slowed the BLAS threads).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit
from numba.cpython.unsafe.numbers import trailing_zeros

HIST = 4096   # counts below this are histogrammed; a row's larger ones (few) are sorted


@njit(cache=True, nogil=True)
def count_fires(words: np.ndarray, n_rows: int, cols: np.ndarray, counts: np.ndarray) -> None:  # pragma: no cover - compiled
    """words [ch, B] uint64: the block's mask rows, bit r of a row at bit r % 64 of word r // 64
    (bits at r >= n_rows ignored); cols [keys, n_rows]: each row's column per key;
    counts [ch, W] += 1 at (neuron, cols[k, r]) for every fire (neuron, r) and key k."""
    nk = cols.shape[0]
    fired = np.empty(words.shape[1] * 64 + 4, np.int64)
    sink = np.zeros(1, np.int64)
    for j in range(words.shape[0]):
        row = words[j]
        cj = counts[j]
        # the neuron's fired rows first (lowest set bit, cleared, per step), then one tight
        # gather-and-add loop per key: independent adds, where one loop over keys per fire ran
        # 1.24x slower (233 against 188 ms on 16,384 rows x 1536 neurons of the demo's layer 20)
        f = 0
        for b in range(row.shape[0]):
            w = row[b]
            base = b * 64
            while w:
                fired[f] = base + np.int64(trailing_zeros(w))
                w &= w - np.uint64(1)
                f += 1
        while f > 0 and fired[f - 1] >= n_rows:
            f -= 1
        # read the neuron's row of counts in order first when the adds will reach most of its
        # cache lines anyway: a streamed read brings it in at memory bandwidth, where the
        # scattered adds would each wait on a miss (1.6x faster on the demo's dense n-gram rows of
        # 240 KB; benchmarks/RESULTS.md, "Index kernels"); sparse rows skip it
        if f * nk >= cj.shape[0] // 16:
            touch = 0
            for c in range(0, cj.shape[0], 16):
                touch += cj[c]
            sink[0] += touch
        for k in range(nk):
            ck = cols[k]
            for a in range(f):
                cj[ck[fired[a]]] += 1


@njit(cache=True, nogil=True)
def segment_stats_rows(seg: np.ndarray, k: int, p: float, total: np.ndarray, n_distinct: np.ndarray,
                       n_cov: np.ndarray, top_col: np.ndarray, top_val: np.ndarray, top_n: np.ndarray,
                       ) -> None:  # pragma: no cover - compiled
    """Per row i of seg [ch, W] (fires of neuron i on each n-gram column), as stats.segment_stats
    defines them: total[i], n_distinct[i], n_cov[i] (the smallest c whose c largest counts reach
    p * total, compared in float64 as `cum - fires < p * total`), and the top min(k, n_distinct)
    columns by count descending, then column ascending: top_col/top_val[i, :top_n[i]]."""
    ch, W = seg.shape
    hist = np.zeros(HIST, np.int64)
    big = np.empty(64, np.int64)       # the row's counts >= HIST (few: they sum to at most the tokens), grown as needed
    for i in range(ch):
        row = seg[i]
        tot = 0
        nd = 0
        nbig = 0
        vmax = 0
        for c in range(W):
            v = row[c]
            if v > 0:
                tot += v
                nd += 1
                if v < HIST:
                    hist[v] += 1
                    if v > vmax:
                        vmax = v
                else:
                    if nbig == big.shape[0]:
                        grown = np.empty(2 * nbig, np.int64)
                        grown[:nbig] = big
                        big = grown
                    big[nbig] = v
                    nbig += 1
        total[i] = tot
        n_distinct[i] = nd
        bigs = np.sort(big[:nbig])[::-1]
        # walk the counts from the largest down: coverage, and t = the count at rank kk
        target = p * float(tot)
        kk = min(k, nd)
        run = 0            # sum of the counts walked so far (those before the current one)
        cov = 0
        seen = 0           # counts walked so far
        t = 0
        n_gt = 0           # counts above t
        for a in range(nbig):
            v = bigs[a]
            if float(run) < target:
                cov += 1
            run += v
            seen += 1
            if seen == kk:
                t = v
        if t > 0:
            for a in range(nbig):
                if bigs[a] > t:
                    n_gt += 1
        v = vmax
        while v > 0:
            m = hist[v]
            if m:
                # the entries e = 0..m-1 of this count have `run + e * v` before them
                if float(run) < target:
                    e = min(m, int(math.ceil((target - run) / v)))
                    while e > 0 and float(run + (e - 1) * v) >= target:
                        e -= 1
                    while e < m and float(run + e * v) < target:
                        e += 1
                    cov += e
                if seen < kk <= seen + m:
                    t = v
                    n_gt = seen
                run += m * v
                seen += m
                hist[v] = 0
            v -= 1
        n_cov[i] = cov if tot > 0 else 0
        # top: every count above t, then the first (by column) counts equal to t
        n = 0
        if kk > 0:
            eq_left = kk - n_gt
            for c in range(W):
                v = row[c]
                if v > t or (v == t and eq_left > 0):
                    if v == t:
                        eq_left -= 1
                    top_col[i, n] = c
                    top_val[i, n] = v
                    n += 1
        top_n[i] = n
        # order by count descending, then column ascending (insertion sort: n <= k)
        for a in range(1, n):
            cv, cc = top_val[i, a], top_col[i, a]
            b = a
            while b > 0 and (top_val[i, b - 1] < cv or (top_val[i, b - 1] == cv and top_col[i, b - 1] > cc)):
                top_val[i, b] = top_val[i, b - 1]
                top_col[i, b] = top_col[i, b - 1]
                b -= 1
            top_val[i, b] = cv
            top_col[i, b] = cc


@njit(cache=True, nogil=True)
def _insert(vals: np.ndarray, idx: np.ndarray, n: int, v, i: int, largest: bool) -> int:  # pragma: no cover - compiled
    """(v, i) into the sorted first n entries of vals/idx (descending if largest, else ascending;
    of equal values the earlier inserted stays first); returns the new n (at most len(vals))."""
    k = vals.shape[0]
    p = n if n < k else k - 1
    while p > 0 and ((v > vals[p - 1]) if largest else (v < vals[p - 1])):
        vals[p] = vals[p - 1]
        idx[p] = idx[p - 1]
        p -= 1
    vals[p] = v
    idx[p] = i
    return n + 1 if n < k else k


@njit(cache=True, nogil=True, fastmath=True)
def _block_range(row: np.ndarray, a: int, b: int):  # pragma: no cover - compiled
    mx = row[a]
    mn = row[a]
    for j in range(a + 1, b):
        mx = max(mx, row[j])
        mn = min(mn, row[j])
    return mx, mn


@njit(cache=True, nogil=True)
def top_bottom_k(s: np.ndarray, top: np.ndarray, bot: np.ndarray) -> None:  # pragma: no cover - compiled
    """Each row of s [rows, n] float32 (no NaN: the caller checks): top[r] the columns of its k
    largest values (descending), bot[r] of its k smallest (ascending); of equal values the lower
    column first, as a stable sort would give. Once both lists are full, a block of 64 values
    whose max and min can enter neither is passed over after one max/min pass."""
    k = top.shape[1]
    tv = np.empty(k, np.float32)
    bv = np.empty(k, np.float32)
    ti = np.empty(k, np.int64)
    bi = np.empty(k, np.int64)
    n = s.shape[1]
    for r in range(s.shape[0]):
        row = s[r]
        nt = 0
        nb = 0
        for a in range(0, n, 64):
            b = min(n, a + 64)
            if nt == k and nb == k:
                mx, mn = _block_range(row, a, b)
                if mx <= tv[k - 1] and mn >= bv[k - 1]:
                    continue
            for j in range(a, b):
                v = row[j]
                if nt < k or v > tv[k - 1]:
                    nt = _insert(tv, ti, nt, v, j, True)
                if nb < k or v < bv[k - 1]:
                    nb = _insert(bv, bi, nb, v, j, False)
        for t in range(k):
            top[r, t] = ti[t]
            bot[r, t] = bi[t]
