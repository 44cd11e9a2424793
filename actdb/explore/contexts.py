"""Contexts where a neuron fires, from its mask and the token arrays.

Page 1 holds the most telling contexts: each row where the neuron fires is scored by
P(fires | its token) over the whole store, the share of that token's occurrences on which the
neuron fires (how much the token alone explains the fire); ties go to the context with more
fires of the neuron within its window, then to the earlier row. Later pages are a random sample
of the other fires, seeded by (seed, layer, neuron), so a page reads the same every time.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError, NotFound
from .explorer import Explorer, explorer

MOST_TELLING, RANDOM_SAMPLE = "most telling", "random sample"


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
    n_fire_rows: int       # rows where the neuron fires


def contexts(store, layer: int, neuron: int, page: int = 1, per_page: int = 10, window: int = 12,
             seed: int = 0) -> ContextPage:
    """Page `page` of the contexts where neuron layer:neuron fires (module docstring), each with
    up to `window` tokens on each side within its sequence. `store`: an actdb.Store or an Explorer."""
    ex = explorer(store)
    ex.check_neuron(layer, neuron)
    if page < 1:
        raise InputError(f"page: expected 1 or more, got {page}")
    mask = ex.st().neuron(layer, neuron)
    rows = np.flatnonzero(mask)
    n_pages = 1 + -(-max(0, len(rows) - per_page) // per_page)
    if page > n_pages:
        raise NotFound(f"contexts page {page} of neuron {layer}:{neuron}: it has {n_pages} page(s)")
    ordered, p = telling_order(ex, mask, rows, window)
    if page == 1:
        pick, probs, how = ordered[:per_page], p[:per_page], MOST_TELLING
    else:
        rest = ordered[per_page:]
        sample = np.random.default_rng([seed, layer, neuron]).permutation(len(rest))[(page - 2) * per_page:
                                                                                      (page - 1) * per_page]
        pick, probs, how = rest[sample], p[per_page:][sample], RANDOM_SAMPLE
    found = tuple(_context(ex, mask, r, pr, window) for r, pr in zip(pick.tolist(), probs.tolist()))
    return ContextPage(found, how, page, n_pages, int(len(rows)))


def telling_order(ex: Explorer, mask: np.ndarray, rows: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Fire rows in "most telling" order (module docstring) and each row's P(fires | token)."""
    a = ex.arrays()
    ids = a.ids[rows]
    fires_tok = np.bincount(ids, minlength=len(a.counts))
    p = fires_tok[ids] / a.counts[ids]
    cum = np.r_[0, np.cumsum(mask, dtype=np.int64)]
    lo = np.maximum(a.start[rows], rows - window)
    hi = np.minimum(a.end[rows], rows + window)
    density = cum[hi + 1] - cum[lo]
    order = np.lexsort((rows, -density, -p))
    return rows[order], p[order]


def _context(ex: Explorer, mask: np.ndarray, r: int, p_fire: float, window: int) -> Context:
    """The tokens around fire row r within its sequence, each with whether the neuron fired."""
    a, vocab = ex.arrays(), ex.vocab()
    lo, hi = max(int(a.start[r]), r - window), min(int(a.end[r]), r + window)
    text = [vocab[i] if i < len(vocab) else f"#{i}" for i in a.ids[lo:hi + 1].tolist()]
    toks = tuple(ContextToken(x, t, bool(mask[x]), x == r) for x, t in zip(range(lo, hi + 1), text))
    return Context(r, int(a.seq[r]), int(a.pos[r]), int(a.doc[r]), toks, sum(t.fired for t in toks), p_fire)
