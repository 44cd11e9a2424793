"""Per-neuron n-gram statistics from exact dense counts (one neuron chunk at a time):
total, number of distinct n-grams, coverage at p, the top-k n-grams, and detectors.

Conventions match the SQL views (actdb.db): n-grams are ranked by fires descending, then by
id ascending (columns of a count matrix are in id order); coverage at p is the smallest c
whose top-c fires reach p * total, compared in float64 like `cum - fires < p * total`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .count import compiled


@dataclass
class SegmentStats:
    total: np.ndarray        # [ch] n-gram fires
    n_distinct: np.ndarray   # [ch]
    n_covering: np.ndarray   # [ch] coverage at p (0 where total == 0)
    top_row: np.ndarray      # top-k entries, sorted by row then rank
    top_col: np.ndarray
    top_val: np.ndarray
    top_rank: np.ndarray     # 1-based
    top_cum: np.ndarray


def _rank_in_row(rows: np.ndarray) -> np.ndarray:
    """rows sorted ascending -> 0-based position of each entry within its row."""
    return np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")


def segment_stats(seg: np.ndarray, k: int, p: float) -> SegmentStats:
    """seg: [ch, W] exact fires of each neuron (row) on each n-gram (column). The compiled
    kernel (index/kernels.py) where it loads; the numpy path (its reference) otherwise."""
    jit = compiled()
    return _segment_stats_compiled(jit, seg, k, p) if jit is not None else _segment_stats_numpy(seg, k, p)


def _segment_stats_compiled(jit, seg: np.ndarray, k: int, p: float) -> SegmentStats:
    ch = seg.shape[0]
    total, n_distinct, n_cov, top_n = (np.empty(ch, np.int64) for _ in range(4))
    top_col, top_val = np.empty((ch, k), np.int64), np.empty((ch, k), np.int64)
    jit.segment_stats_rows(seg, k, float(p), total, n_distinct, n_cov, top_col, top_val, top_n)
    keep = np.arange(k)[None, :] < top_n[:, None]                         # [ch, k] the filled slots
    rank = np.broadcast_to(np.arange(1, k + 1, dtype=np.int64), (ch, k))
    cum = np.cumsum(np.where(keep, top_val, 0), axis=1)   # the top entries are the first ranks of the row
    return SegmentStats(total, n_distinct, n_cov, np.repeat(np.arange(ch, dtype=np.int64), top_n), top_col[keep],
                        top_val[keep], rank[keep], cum[keep])


def _segment_stats_numpy(seg: np.ndarray, k: int, p: float) -> SegmentStats:
    used = np.flatnonzero(seg.any(axis=0))
    if len(used) < seg.shape[1] // 2:          # sparse chunk: sort only the columns some neuron fires on
        st = _segment_stats_numpy(np.ascontiguousarray(seg[:, used]), k, p)
        st.top_col = used[st.top_col]
        return st
    ch, W = seg.shape
    total = seg.sum(axis=1, dtype=np.int64)
    n_distinct = np.count_nonzero(seg, axis=1).astype(np.int64)
    L = int(n_distinct.max()) if ch else 0
    # each row's nonzero counts, descending (a row sort is SIMD-fast; only the nonzero tail is kept)
    desc = np.sort(seg, axis=1)[:, W - L:][:, ::-1].astype(np.int64)
    cum = np.cumsum(desc, axis=1)
    target = p * total.astype(np.float64)
    # coverage: entries whose running sum before them is still short of p * total (as in SQL)
    n_cov = np.count_nonzero(((cum - desc) < target[:, None]) & (desc > 0), axis=1).astype(np.int64)
    n_cov[total == 0] = 0
    # top-k: every count above the k-th largest value t, then the first (by id) counts equal to t
    kk = min(k, L)
    t = desc[:, kk - 1] if kk else np.zeros(ch, np.int64)
    t = np.where(t > 0, t, 1)                       # rows with fewer than k n-grams: all nonzero
    gt_r, gt_c = np.nonzero(seg > t[:, None])
    allowed = np.minimum(k, n_distinct) - np.bincount(gt_r, minlength=ch)
    eq_r, eq_c = [], []
    need = allowed > 0
    step = max(1024, 4 * k)
    for c0 in range(0, W, step):                    # ids ascending; usually the first window suffices
        if not need.any():
            break
        rows = np.flatnonzero(need)
        r, c = np.nonzero(seg[rows, c0:c0 + step] == t[rows, None])
        r = rows[r]
        keep = _rank_in_row(r) < allowed[r]
        eq_r.append(r[keep])
        eq_c.append(c[keep] + c0)
        allowed -= np.bincount(r[keep], minlength=ch)
        need = allowed > 0
    tr = np.concatenate([gt_r] + eq_r)
    tc = np.concatenate([gt_c] + eq_c)
    tv = seg[tr, tc].astype(np.int64)
    o = np.lexsort((tc, -tv, tr))
    tr, tc, tv = tr[o], tc[o], tv[o]
    rank = _rank_in_row(tr) + 1
    tcum = cum[tr, rank - 1] if len(tr) else np.zeros(0, np.int64)
    return SegmentStats(total, n_distinct, n_cov, tr, tc, tv, rank.astype(np.int64), tcum.astype(np.int64))


def detectors(seg: np.ndarray, st: SegmentStats, counts: np.ndarray, max_cov: int, p_token: float,
              p_share: float) -> list[tuple[int, np.ndarray, float]]:
    """Neurons (rows) whose coverage is 1..max_cov and whose covered n-grams (P(fires | n-gram)
    >= p_token) hold >= p_share of their fires -> [(row, covered columns by fires desc, share)]."""
    out = []
    for i in np.flatnonzero((st.n_covering >= 1) & (st.n_covering <= max_cov)):
        row = seg[i]
        nz = np.flatnonzero(row)
        f = row[nz]
        ok = f / counts[nz].astype(np.float64) >= p_token
        covered = int(f[ok].sum())
        if ok.any() and covered >= p_share * float(st.total[i]):
            o = np.lexsort((nz[ok], -f[ok]))
            out.append((int(i), nz[ok][o], covered / float(st.total[i])))
    return out


def switches(fr: np.ndarray, eps: float) -> np.ndarray:
    """Per row of fr [neurons, T]: how many times the frequency goes from <= eps to >= 1-eps
    or back, along positions (positions in between are skipped)."""
    state = np.where(fr >= 1 - eps, 1, np.where(fr <= eps, 0, -1))
    out = np.zeros(fr.shape[0], np.int64)
    for i in range(fr.shape[0]):
        s = state[i][state[i] >= 0]
        out[i] = int(np.count_nonzero(s[1:] != s[:-1])) if len(s) > 1 else 0
    return out


def positional_mi(fires_full: np.ndarray, n_full: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """fires_full [neurons, T], n_full [T] -> (mi [neurons], fr_pos [neurons, T]) (docs/definitions.md, positional neurons)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        frp = fires_full / n_full[None, :]
        fr = fires_full.sum(axis=1) / n_full.sum()
        fr = fr[:, None]

        def term(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return np.where(a > 0, a * np.log(np.where(a > 0, a, 1) / np.where(b > 0, b, 1)), 0.0)

        mi = (term(frp, fr) + term(1 - frp, 1 - fr)).sum(axis=1) / n_full.shape[0]
    return mi, frp
