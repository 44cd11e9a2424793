"""The thresholds of the magnitude fire rules (hooks.py), exactly:

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

import numpy as np
import torch


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
