"""The views' numpy reference (a helper, not tests): everything the views answer, computed
directly from a store's unpacked masks (Ref), and the index's id of an n-gram (gram_ids)."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np

from actdb.index.build import read_index_info

PAD = None   # a slot before the start of the sequence in a reference n-gram


class Ref:
    """Everything the views answer, computed directly from the unpacked masks."""

    def __init__(self, st, p: float = 0.95):
        m = st.manifest
        tok = st.tokens().sort("row")
        self.ids = tok["token_id"].to_numpy().astype(np.int64)
        self.seq = tok["seq"].to_numpy()
        self.pos = tok["pos"].to_numpy().astype(np.int64)
        self.dom = tok["domain"].cast(str).to_numpy()
        first = 1 if m.prefix_tokens else 0
        seqlen = np.bincount(self.seq)
        self.full = seqlen[self.seq] == m.seq_len
        self.T = m.seq_len
        self.n = len(self.ids)
        info = read_index_info(st.path).config
        self.ngram_layers = tuple(info.ngram_layers)
        self.layers = m.layers
        n = self.n
        # the n-gram ending at each row (docs/definitions.md): a slot before the sequence start is PAD; every n
        # ends on every row but the BOS position, where the tokenizer adds one (None: not counted)
        self.grams = {k: [tuple(int(self.ids[r - j]) if self.pos[r] >= j else PAD for j in range(k - 1, -1, -1))
                          if self.pos[r] >= first else None for r in range(n)] for k in (1, 2, 3)}
        self.gram_count = {k: Counter(g for g in self.grams[k] if g is not None) for k in (1, 2, 3)}
        self.masks = {l: st.masks(l) for l in m.layers}  # [rows, d]
        self.d = m.d_ffn
        self.p = p

    def fires(self, l):
        return self.masks[l].sum(axis=0)

    def counts(self, l, nn, k):
        fired = np.flatnonzero(self.masks[l][:, nn])
        return Counter(self.grams[k][r] for r in fired if self.grams[k][r] is not None)

    def top(self, l, nn, k, K, st):
        """The neuron's K n-grams by fires desc, then id: [(id, fires)]."""
        c = [(g[0] if k == 1 else gram_ids(st, g), n) for g, n in self.counts(l, nn, k).items()]
        return sorted(c, key=lambda x: (-x[1], x[0]))[:K]

    def coverage(self, l, nn, k, p=None):
        p = self.p if p is None else p
        c = sorted(self.counts(l, nn, k).values(), reverse=True)
        if not c:
            return None
        total = sum(c)
        cum = np.cumsum(c)
        return int(np.argmax(cum >= p * total) + 1)

    def detector(self, l, nn, k, max_cov, p_cov=0.95, p_tok=0.95, p_share=0.95):
        cov = self.coverage(l, nn, k, p_cov)
        if cov is None or not 1 <= cov <= max_cov:
            return None
        cnt = self.counts(l, nn, k)
        covered = [g for g, c in cnt.items() if c / self.gram_count[k][g] >= p_tok]
        if sum(cnt[g] for g in covered) >= p_share * sum(cnt.values()):
            return set(covered)
        return None

    def fr_pos(self, l):
        m = self.masks[l][self.full]
        pos = self.pos[self.full]
        return np.stack([m[pos == q].mean(axis=0) for q in range(self.T)], axis=1)  # [d, T]

    def mi(self, l):
        m = self.masks[l][self.full]
        frp = self.fr_pos(l)
        out = []
        for nn in range(self.d):
            fr = m[:, nn].mean()
            s = 0.0
            for q in range(self.T):
                a = frp[nn, q]
                if a > 0:
                    s += a * math.log(a / fr)
                if 1 - a > 0:
                    s += (1 - a) * math.log((1 - a) / (1 - fr))
            out.append(s / self.T)
        return np.array(out)

    @staticmethod
    def n_switches(fr, eps):
        states = [1 if f >= 1 - eps else 0 for f in fr if f >= 1 - eps or f <= eps]
        return sum(a != b for a, b in zip(states, states[1:]))

    def pattern(self, fr, min_switches=3, eps=0.05):
        lo, hi = fr.min(), fr.max()
        if self.n_switches(fr, eps) >= min_switches:
            return "oscillatory", self.n_switches(fr, 0.0) >= min_switches
        if lo <= eps and hi >= 1 - eps:
            return "both extremes", bool(lo == 0 and hi == 1)
        if lo <= eps or hi >= 1 - eps:
            return "one extreme", bool(lo == 0 or hi == 1)
        return "other", False

    def positional(self, l, mi_min=0.05, min_switches=3):
        mi, frp = self.mi(l), self.fr_pos(l)
        return {nn: (mi[nn], *self.pattern(frp[nn], min_switches)) for nn in range(self.d) if mi[nn] > mi_min}


def gram_ids(st, g):
    """The index's id of an n-gram tuple (PAD slots included)."""
    cfg = read_index_info(st.path).config
    x = 0
    for t in g:
        x = x * cfg.vocab_base + (cfg.ngram_pad if t is PAD else t)
    return x


# the paper's unigram coverage bins
UNI_BINS = [(1, 5), (6, 10), (11, 20), (21, 50), (51, 200), (201, 1000), (1001, 2000), (2001, 50000)]


def same(a: list[tuple], b: list[tuple]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if len(x) != len(y):
            return False
        for u, v in zip(x, y):
            if isinstance(u, list) and isinstance(v, list):
                if not same([tuple(u)], [tuple(v)]):
                    return False
            elif isinstance(u, float) or isinstance(v, float):
                if not math.isclose(u, v, rel_tol=1e-9, abs_tol=1e-12):
                    return False
            elif u != v:
                return False
    return True
