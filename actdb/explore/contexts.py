"""Contexts where a neuron fires, from its mask and the token arrays.

Page 1 holds the most telling contexts: each row where the neuron fires is scored by
P(fires | its token) over the whole store, the share of that token's occurrences on which the
neuron fires (how much the token alone explains the fire); ties go to the context with more
fires of the neuron within its window, then to the earlier row. Later pages are a random sample
of the other fires, seeded by (seed, layer, neuron), so a page reads the same every time.

A page reads the neuron's mask over the first SCAN_ROWS token rows only (with `window` rows
more for the last contexts): a mask read, and the scoring of every fire, grow with the store, and
a busy neuron fires on half of it. On a larger store "the whole store" above is those rows, and
the page says so (ContextPage.scanned_rows against the store's tokens). The token arrays the
explorer keeps for it are those rows' too: a server's memory does not grow with the store.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError, NotFound
from .explorer import Explorer, explorer

MOST_TELLING, RANDOM_SAMPLE = "most telling", "random sample"
SCAN_ROWS = 1 << 20   # token rows a contexts page reads at most (docs/explorer.md)


@dataclass(frozen=True)
class ContextToken:
    row: int
    text: str
    fired: bool
    center: bool           # the fire the context is about


@dataclass(frozen=True)
class Context:
    row: int
    seq: int
    pos: int
    doc: int
    tokens: tuple[ContextToken, ...]   # the fire's window within its sequence
    fires_in_window: int
    p_fire_token: float                # P(fires | the centre's token) over the store


@dataclass(frozen=True)
class ContextPage:
    contexts: tuple[Context, ...]
    contexts_kind: str     # MOST_TELLING (page 1) or RANDOM_SAMPLE
    contexts_page: int
    contexts_pages: int
    n_fire_rows: int       # rows where the neuron fires, among the scanned ones
    scanned_rows: int      # the first rows of the store the contexts come from (all of them up to SCAN_ROWS)


def contexts(store, layer: int, neuron: int, page: int = 1, per_page: int = 10, window: int = 12,
             seed: int = 0) -> ContextPage:
    """Page `page` of the contexts where neuron layer:neuron fires (module docstring), each with
    up to `window` tokens on each side within its sequence. `store`: an actdb.Store or an Explorer."""
    ex = explorer(store)
    ex.check_neuron(layer, neuron)
    if page < 1:
        raise InputError(f"page: expected 1 or more, got {page}")
    n = ex.manifest.n_tokens
    scanned = min(n, SCAN_ROWS)
    mask = ex.st().neuron(layer, neuron, 0, min(n, scanned + window))   # the window past the last scanned row
    rows = np.flatnonzero(mask[:scanned])
    n_pages = 1 + -(-max(0, len(rows) - per_page) // per_page)
    if page > n_pages:
        raise NotFound(f"contexts page {page} of neuron {layer}:{neuron}: it has {n_pages} page(s)")
    if page == 1:
        pick, probs = telling_order(ex, mask, rows, window, scanned, k=per_page)
        how = MOST_TELLING
    else:
        top, _ = telling_order(ex, mask, rows, window, scanned, k=per_page)
        rest = np.setdiff1d(rows, top, assume_unique=True)    # in row order
        sample = np.random.default_rng([seed, layer, neuron]).permutation(len(rest))[(page - 2) * per_page:
                                                                                      (page - 1) * per_page]
        pick = rest[sample]
        probs, how = _p_fire(ex, mask, scanned)[ex.arrays(len(mask)).ids[pick]], RANDOM_SAMPLE
    found = tuple(_context(ex, mask, r, pr, window) for r, pr in zip(pick.tolist(), probs.tolist()))
    return ContextPage(found, how, page, n_pages, int(len(rows)), scanned)


def _p_fire(ex: Explorer, mask: np.ndarray, scanned: int) -> np.ndarray:
    """P(fires | token) by token id over the first `scanned` rows (the index's counts where that
    is the whole store)."""
    a = ex.arrays(len(mask))
    ids = a.ids[:scanned]
    fires_tok = np.bincount(ids[mask[:scanned]], minlength=len(a.counts))
    counts = a.counts if scanned == len(a.ids) else np.bincount(ids, minlength=len(a.counts))
    return fires_tok / np.maximum(counts, 1)


def telling_order(ex: Explorer, mask: np.ndarray, rows: np.ndarray, window: int, scanned: int | None = None,
                  k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fire rows in "most telling" order (module docstring) and each row's P(fires | token); the
    first k only (a selection, not a sort of every fire) when k is given."""
    a = ex.arrays(len(mask))
    scanned = len(mask) if scanned is None else scanned
    p_tok = _p_fire(ex, mask, scanned)
    p = p_tok[a.ids[rows]]
    cum = np.r_[0, np.cumsum(mask, dtype=np.int64)]
    lo = np.maximum(a.start[rows], rows - window)
    hi = np.minimum(np.minimum(a.end[rows], rows + window), len(mask) - 1)
    density = cum[hi + 1] - cum[lo]
    if k is not None and len(rows) > k:
        # (p, density) as one integer: p's rank among its distinct values, then the density
        rank_tok = np.unique(p_tok, return_inverse=True)[1].astype(np.int64)   # per token id: a vocabulary's work
        key = rank_tok[a.ids[rows]] * (2 * window + 2) + density
        kth = np.partition(key, len(key) - k)[len(key) - k]
        keep = key >= kth          # the k best and their ties, still in row order
        rows, p, density = rows[keep], p[keep], density[keep]
    order = np.lexsort((rows, -density, -p))[:k]
    return rows[order], p[order]


def _context(ex: Explorer, mask: np.ndarray, r: int, p_fire: float, window: int) -> Context:
    """The tokens around fire row r within its sequence, each with whether the neuron fired."""
    a, vocab = ex.arrays(len(mask)), ex.vocab()
    lo, hi = max(int(a.start[r]), r - window), min(int(a.end[r]), r + window, len(mask) - 1)
    text = [vocab[i] if i < len(vocab) else f"#{i}" for i in a.ids[lo:hi + 1].tolist()]
    toks = tuple(ContextToken(x, t, bool(mask[x]), x == r) for x, t in zip(range(lo, hi + 1), text))
    return Context(r, int(a.seq[r]), int(a.pos[r]), int(a.doc[r]), toks, sum(t.fired for t in toks), p_fire)
