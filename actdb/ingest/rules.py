"""Magnitude fire rules at ingest (abs>T, top:Q), on h = the FFN hidden value the output projection
reads (its forward input: act(fc_in x), or act_fn(gate x) * up x for gated FFNs):

  abs>T   fires when |h| > T;
  top:Q   fires when |h| > t_layer, t_layer = the Q-quantile of |h| over all (token, neuron)
          values of the layer's first block of tokens, exactly as numpy's default
          np.quantile (method 'linear') computes it on that block in float32.

Every comparison is exact: |h| (float32, exact from the model's dtype) > t in real numbers, done
in float32 against the largest float32 <= t (for a float32 x, x > t  <=>  x > floor32(t)).

top:Q in one forward: while the first block runs, each layer keeps only its largest
n - floor((n-1)Q) values of |h| with their positions (bounded by (1-Q) x block x d_ffn), which
hold the two order statistics the quantile interpolates and every value above it. When the
block's last row has passed, the threshold is fixed and the block's bits are set from those
candidates; later rows compare directly. The thresholds are committed with block 0, so a
resumed ingest reads them back.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np
import torch

from ..grammar import FireRule


def floor32(t: float) -> float:
    """The largest float32 <= t, as a Python float (exactly representable in float32)."""
    f = np.float32(t)
    if float(f) > t:
        f = np.nextafter(f, np.float32(-np.inf))
    return float(f)


class TopCandidates:
    """The largest |h| of one layer's first block (`rows` x `d_ffn` values) and their positions."""

    def __init__(self, rows: int, d_ffn: int, q: float) -> None:
        self.rows, self.d = rows, d_ffn
        n = rows * d_ffn
        v = (n - 1) * q                   # numpy's virtual index for method 'linear', in float64
        if v >= n - 1:
            self.lo = self.hi = n - 1
            self.gamma = 0.0
        else:
            self.lo = int(math.floor(v))
            self.hi = self.lo + 1
            self.gamma = v - self.lo
        self.n = n
        self.keep = n - self.lo           # sorted positions lo..n-1: the `keep` largest values
        self.vals: torch.Tensor | None = None   # [<= keep] float32
        self.idx: torch.Tensor | None = None    # [<= keep] int64, row * d_ffn + neuron
        self.seen = 0

    @property
    def complete(self) -> bool:
        return self.seen == self.rows

    def push(self, a: torch.Tensor, row0: int) -> None:
        """a: |h| [k, d_ffn] float32 of first-block rows row0..row0+k."""
        flat = a.reshape(-1)
        base = row0 * self.d
        if self.vals is not None and self.vals.numel() >= self.keep:
            # only values above the current keep-th largest can still matter
            sel = (flat > self.vals.min()).nonzero().squeeze(1)
            new_v, new_i = flat[sel], sel + base
        else:
            new_v = flat
            new_i = torch.arange(flat.numel(), device=flat.device, dtype=torch.int64) + base
        vals = new_v if self.vals is None else torch.cat([self.vals, new_v])
        idx = new_i if self.idx is None else torch.cat([self.idx, new_i])
        if vals.numel() > self.keep:
            vals, pos = vals.topk(self.keep)
            idx = idx[pos]
        self.vals, self.idx = vals.clone(), idx
        self.seen += a.shape[0]

    def threshold(self) -> float:
        """np.quantile(|h| of the block, q): numpy interpolates its two order statistics with
        gamma, and so does np.quantile on just those two with q = gamma (same float32 lerp)."""
        desc = self.vals.sort(descending=True).values.cpu().numpy()
        a, b = desc[self.n - 1 - self.lo], desc[self.n - 1 - self.hi]
        return float(np.quantile(np.array([a, b], dtype=np.float32), self.gamma))

    def above(self, cut: float) -> tuple[np.ndarray, np.ndarray]:
        """(rows, neurons) of the block's values > cut (all among the candidates)."""
        keep = (self.vals > cut).nonzero().squeeze(1)
        flat = self.idx[keep].cpu().numpy()
        return flat // self.d, flat % self.d


class MagnitudeRule:
    """One abs>T or top:Q rule over the recorded layers: per layer its threshold and fire mask."""

    def __init__(self, rule: FireRule, n_layers: int, d_ffn: int, first_block_rows: int,
                 thresholds: list[float] | None = None) -> None:
        self.rule = rule
        if rule.kind == "abs":
            thresholds = [float(rule.value)] * n_layers
        self.values: list[float | None] = list(thresholds) if thresholds else [None] * n_layers
        self.cuts = [None if t is None else floor32(t) for t in self.values]
        # top:Q without recorded thresholds: fixed by the first block of this run
        self.calib = None if thresholds else [TopCandidates(first_block_rows, d_ffn, rule.value)
                                              for _ in range(n_layers)]

    @property
    def fixed(self) -> bool:
        return all(v is not None for v in self.values)

    def fired(self, i: int, a: torch.Tensor, row0: int) -> torch.Tensor:
        """a: |h| [n, d_ffn] float32 of token rows row0..row0+n of layer i -> fired [n, d_ffn] bool.
        First-block rows read False here; patch_first_block sets them."""
        cut = self.cuts[i]
        if cut is not None:
            return a > cut
        c = self.calib[i]
        k = min(a.shape[0], c.rows - row0)
        c.push(a[:k], row0)
        out = torch.zeros(a.shape, dtype=torch.bool, device=a.device)
        if c.complete:
            self.values[i] = c.threshold()
            self.cuts[i] = floor32(self.values[i])
            if k < a.shape[0]:
                out[k:] = a[k:] > self.cuts[i]
        return out

    def patch_first_block(self, masks: np.ndarray) -> None:
        """masks: block 0, [layers, d_ffn, nbytes] uint8: set its bits above each layer's threshold."""
        if self.calib is None:
            return
        for i, c in enumerate(self.calib):
            rows, neurons = c.above(self.cuts[i])
            np.bitwise_or.at(masks[i], (neurons, rows // 8), (1 << (rows % 8)).astype(np.uint8))
        self.calib = None   # done: free the candidates


def magnitude_rules(rules: list, n_layers: int, d_ffn: int, first_rows: int,
                    thresholds: dict[str, list[float]]) -> dict[str, MagnitudeRule]:
    """The abs>T and top:Q rules by name; a top:Q rule without recorded thresholds is fixed by
    the first block (`first_rows` tokens) of the forward it runs in."""
    return {r.name: MagnitudeRule(r, n_layers, d_ffn, first_rows, thresholds.get(r.name))
            for r in rules if r.kind != "sign"}


def unfixed_top_rules(rules: Iterable[FireRule], thresholds: dict[str, Any]) -> list[str]:
    """The top:Q rules whose thresholds are not recorded yet (block 0 fixes them)."""
    return [r.name for r in rules if r.kind == "top" and r.name not in thresholds]


def top_thresholds(mags: dict[str, MagnitudeRule]) -> dict[str, list[float]]:
    """The fixed per-layer thresholds of the top:Q rules, as the ingest state records them."""
    return {name: list(r.values) for name, r in mags.items() if r.rule.kind == "top" and r.fixed}


def definition(rule: FireRule, adapter, first_block_rows: int, sign_text: str) -> str:
    """A rule in words, for the manifest."""
    if rule.kind == "sign":
        return sign_text
    h = (f"h = {adapter.fc_out} input = act_fn(gate_proj x) * up_proj x" if adapter.gated
         else f"h = {adapter.fc_out} input = act({adapter.fc_in} x)")
    if rule.kind == "abs":
        return f"|h| > {rule.value!r}, {h}"
    return (f"|h| > the layer's {rule.value!r}-quantile of |h| over the first {first_block_rows:,} tokens "
            f"x all neurons (numpy's linear method; thresholds per layer), {h}")
