"""Per-neuron n-gram statistics from exact dense counts (one neuron chunk at a time):
total, number of distinct n-grams, coverage at p, the top-k n-grams, and detectors.

Conventions match the SQL views (actdb.db): n-grams are ranked by fires descending, then by
id ascending (columns of a count matrix are in id order); coverage at p is the smallest c
whose top-c fires reach p * total, compared in float64 like `cum - fires < p * total`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CAP = 256  # counts below CAP are histogrammed per neuron; the (few) larger ones are sorted


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
    """seg: int64 [ch, W] exact fires of each neuron (row) on each n-gram (column)."""
    ch = seg.shape[0]
    r, c = np.nonzero(seg)                     # row-major: rows ascending, columns ascending within a row
    v = seg[r, c]
    total = seg.sum(axis=1, dtype=np.int64)
    n_distinct = np.bincount(r, minlength=ch).astype(np.int64)
    big = v >= CAP
    # large counts: sorted per row by (fires desc, id asc)
    bo = np.lexsort((c[big], -v[big], r[big]))
    rb, cb, vb = r[big][bo], c[big][bo], v[big][bo]
    nb = np.bincount(rb, minlength=ch)
    cs = np.cumsum(vb)
    rank_b = _rank_in_row(rb)
    cum_b = cs
    if len(rb):  # running sum within the row
        first = rb.searchsorted(rb, side="left")
        cum_b = cs - (cs[first] - vb[first])
    big_sum = np.bincount(rb, weights=vb, minlength=ch).astype(np.int64) if len(rb) else np.zeros(ch, np.int64)
    # small counts: histogram per row, values CAP-1 .. 1 (descending) as columns
    small = ~big
    H = np.bincount(r[small] * CAP + v[small], minlength=ch * CAP).reshape(ch, CAP)[:, :0:-1]
    vals = np.arange(CAP - 1, 0, -1, dtype=np.int64)
    cnt_cum = np.cumsum(H, axis=1)
    mass_cum = np.cumsum(H * vals, axis=1)

    # coverage
    target = p * total.astype(np.float64)
    n_cov = np.zeros(ch, np.int64)
    in_big = (big_sum.astype(np.float64) >= target) & (total > 0)
    if len(rb):
        hit = (cum_b - vb).astype(np.float64) < target[rb]
        n_cov += np.bincount(rb[hit & in_big[rb]], minlength=ch)
    rest = ~in_big & (total > 0)
    if rest.any():
        rows = np.flatnonzero(rest)
        reach = (big_sum[rows, None] + mass_cum[rows]).astype(np.float64) >= target[rows, None]
        j = reach.argmax(axis=1)
        before_mass = np.where(j > 0, mass_cum[rows, j - 1], 0) + big_sum[rows]
        before_cnt = np.where(j > 0, cnt_cum[rows, j - 1], 0) + nb[rows]
        w = vals[j]
        need = np.maximum(1, np.ceil((target[rows] - before_mass) / w).astype(np.int64))
        # float-safe: the smallest need with before + need * w >= target
        need = np.where((before_mass + need * w).astype(np.float64) < target[rows], need + 1, need)
        down = (need > 1) & ((before_mass + (need - 1) * w).astype(np.float64) >= target[rows])
        need = np.where(down, need - 1, need)
        n_cov[rows] = before_cnt + need

    # top-k: large counts first, then small ones down to a threshold value t per row
    want = np.maximum(k - nb, 0)
    tj = (cnt_cum >= want[:, None]).argmax(axis=1)
    tj[cnt_cum[:, -1] < want] = CAP - 2            # fewer than wanted: take every small count (down to 1)
    t = np.where(want > 0, vals[tj], CAP)       # rows that need no small entries: threshold above all
    before_t = np.where(tj > 0, cnt_cum[np.arange(ch), tj - 1], 0)
    allowed_eq = np.where(want > 0, want - before_t, 0)
    rs, cs_, vs = r[small], c[small], v[small]
    gt = vs > t[rs]
    eq = np.flatnonzero(vs == t[rs])
    keep_eq = eq[_rank_in_row(rs[eq]) < allowed_eq[rs[eq]]]
    keep_b = rank_b < k
    tr = np.concatenate([rb[keep_b], rs[gt], rs[keep_eq]])
    tc = np.concatenate([cb[keep_b], cs_[gt], cs_[keep_eq]])
    tv = np.concatenate([vb[keep_b], vs[gt], vs[keep_eq]])
    o = np.lexsort((tc, -tv, tr))
    tr, tc, tv = tr[o], tc[o], tv[o]
    rank = _rank_in_row(tr) + 1
    tcs = np.cumsum(tv)
    if len(tr):
        f = tr.searchsorted(tr, side="left")
        tcum = tcs - (tcs[f] - tv[f])
    else:
        tcum = tcs
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
