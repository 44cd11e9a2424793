"""The thresholds of the magnitude fire rules (hooks.py), exactly:

  abs>T   fires when |h| > T;
  top:Q   fires when |h| > t_layer, t_layer = the Q-quantile of |h| over all (token, neuron)
          values of the layer's first block of tokens, exactly as numpy's default
          np.quantile (method 'linear') computes it on that block in float32;
  ntop:Q  fires when |h| > t_neuron, the same quantile over the neuron's own values of the block
          (np.quantile(block, Q, axis=0)).

Every comparison is exact: |h| (float32, exact from the model's dtype) > t in real numbers, done
in float32 against the largest float32 <= t (for a float32 x, x > t  <=>  x > floor32(t)).

top:Q in one forward: while the first block runs, each layer keeps only its largest
n - floor((n-1)Q) values of |h| with their positions (bounded by (1-Q) x block x d_ffn), which
hold the two order statistics the quantile interpolates and every value above it. When the
block's last row has passed, the threshold is fixed and the block's bits are set from those
candidates; later rows compare directly. ntop:Q keeps the same candidates per neuron: its
largest n - floor((n-1)Q) values of the block's n rows. The thresholds are committed with block 0,
so a resumed ingest reads them back.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def floor32(t: float) -> float:
    """The largest float32 <= t, as a Python float (exactly representable in float32)."""
    f = np.float32(t)
    if float(f) > t:
        f = np.nextafter(f, np.float32(-np.inf))
    return float(f)


def order_statistics(n: int, q: float) -> tuple[int, int, float]:
    """(lo, hi, gamma): numpy's method 'linear' takes the Q-quantile of n values as the lo-th and
    hi-th smallest interpolated with gamma; its virtual index (n-1)Q is computed in float64."""
    v = (n - 1) * q
    if v >= n - 1:
        return n - 1, n - 1, 0.0
    lo = int(math.floor(v))
    return lo, lo + 1, v - lo


def interpolate(a: np.ndarray, b: np.ndarray, gamma: float) -> np.ndarray:
    """numpy's quantile from its two order statistics a <= b (float32, any shape): np.quantile of
    [a, b] at q = gamma takes the same virtual index, gamma, and the same float32 lerp."""
    return np.quantile(np.stack([a, b]).astype(np.float32), gamma, axis=0)


class TopCandidates:
    """The largest |h| of one layer's first block (`rows` x `d_ffn` values) and their positions."""

    def __init__(self, rows: int, d_ffn: int, q: float) -> None:
        self.rows, self.d = rows, d_ffn
        n = rows * d_ffn
        self.lo, self.hi, self.gamma = order_statistics(n, q)
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
        """np.quantile(|h| of the block, q), from its two order statistics."""
        desc = self.vals.sort(descending=True).values.cpu().numpy()
        return float(interpolate(desc[self.n - 1 - self.lo], desc[self.n - 1 - self.hi], self.gamma))

    def above(self, cut: float) -> tuple[np.ndarray, np.ndarray]:
        """(rows, neurons) of the block's values > cut (all among the candidates)."""
        keep = (self.vals > cut).nonzero().squeeze(1)
        flat = self.idx[keep].cpu().numpy()
        return flat // self.d, flat % self.d


class NeuronCandidates:
    """Per neuron, the largest |h| of one layer's first block (`rows` values each) and their rows:
    the `keep` = rows - lo largest, which hold the neuron's two order statistics and every value
    above its quantile."""

    def __init__(self, rows: int, d_ffn: int, q: float) -> None:
        self.rows, self.d = rows, d_ffn
        self.lo, self.hi, self.gamma = order_statistics(rows, q)
        self.keep = rows - self.lo
        self.vals: torch.Tensor | None = None   # [<= keep, d_ffn] float32, descending per neuron
        self.idx: torch.Tensor | None = None    # [<= keep, d_ffn] int64, the rows
        self.seen = 0

    @property
    def complete(self) -> bool:
        return self.seen == self.rows

    def push(self, a: torch.Tensor, row0: int) -> None:
        """a: |h| [k, d_ffn] float32 of first-block rows row0..row0+k."""
        rows = torch.arange(row0, row0 + a.shape[0], device=a.device, dtype=torch.int64)
        idx = rows[:, None].expand(a.shape).contiguous()                        # [k, d_ffn]
        vals = a if self.vals is None else torch.cat([self.vals, a])
        idx = idx if self.idx is None else torch.cat([self.idx, idx])
        vals, pos = vals.topk(min(self.keep, vals.shape[0]), dim=0)              # [<= keep, d_ffn]
        self.vals, self.idx = vals, idx.gather(0, pos)
        self.seen += a.shape[0]

    def thresholds(self) -> np.ndarray:
        """np.quantile(|h| of the block, q, axis=0): float32 [d_ffn]."""
        desc = self.vals.cpu().numpy()
        return interpolate(desc[self.rows - 1 - self.lo], desc[self.rows - 1 - self.hi], self.gamma)

    def above(self, cuts: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(rows, neurons) of the block's values above each neuron's cut, cuts [d_ffn] float32."""
        k, neuron = (self.vals > cuts).nonzero(as_tuple=True)
        return self.idx[k, neuron].cpu().numpy(), neuron.cpu().numpy()
