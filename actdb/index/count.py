"""Step 2 of the index: exact counts of one (layer, neuron chunk) unit over all tokens.

Two ways to count a block of mask rows, equal cell for cell (tests/test_index_device.py):
- sparse (numpy): the fires' coordinates (np.nonzero), their flat (neuron, column) ids, one
  np.bincount; its cost follows the number of fires;
- dense (torch, on any device): the unpacked block as float32 [tokens, neurons] added into the
  count matrix [columns, neurons] with `index_add_`, one row per token and key; its cost follows
  the number of (neuron, token) pairs, so it wins once enough of them fire, and it is the one
  that runs on a GPU. float32 sums of 0/1 are exact below 2**24, so the float counts are moved
  into the integer total before any cell could reach that.
- compiled (numba, index/kernels.py, the CPU default): each neuron's set bits tallied straight
  into the counts; its cost follows the fires at any fire rate, and it is faster than both
  others at every rate measured (benchmarks/RESULTS.md, "Index kernels").
On CPU without the kernels (ACTDB_INDEX_JIT=0) each block takes whichever of the other two is
faster at its fire rate (DENSE_AT); on any other device every block is counted there.
"""
from __future__ import annotations

import numpy as np

from ..jit import compiled as _compiled
from ..store.bits import unpack
from .tokens import TokenArrays

# Fire rate of a block from which the torch path is faster on CPU (benchmarks/RESULTS.md, "Index on
# dense stores"): below it the sparse path's work, which follows the fires, is the smaller.
DENSE_AT = 0.04
FLOAT_EXACT = 2**24   # float32 holds every integer up to here


def compiled():
    """The index's compiled kernels (index/kernels.py), or None (ACTDB_INDEX_JIT=0, no numba)."""
    return _compiled("actdb.index.kernels", "ACTDB_INDEX_JIT")


CELL_BYTES = 24   # int32 counts, the sparse path's int64 tally buffer and bincount result, the dense path's float32


def count_dtype(n_tokens: int) -> type:
    """The counts' integer type: a cell counts at most n_tokens fires."""
    return np.int32 if n_tokens < 2**31 else np.int64


COMPILED_CELL_BYTES = np.dtype(count_dtype(0)).itemsize   # the compiled kernel's int32 counts (under 2**31 tokens)


def _kernel(device: str, dense_at: float | None = None):
    """The compiled kernels when they count this unit (on CPU, no dense_at forced), else None."""
    return compiled() if device == "cpu" and dense_at is None else None


def cell_bytes(device: str, n_tokens: int) -> int:
    """Bytes a unit holds per (neuron, column) cell on `device`: the budget's divisor. The
    compiled kernel tallies into the counts only; the other paths add their buffers (CELL_BYTES)."""
    return np.dtype(count_dtype(n_tokens)).itemsize if _kernel(device) is not None else CELL_BYTES


def chunk_size(width: int, d_ffn: int, store_chunk: int, memory_mb: float, cap: int | None,
               cell: int = CELL_BYTES) -> int:
    """Neurons per unit: `cell` bytes per (neuron, column) cell (cell_bytes) must fit the budget."""
    ch = int(memory_mb * 2**20 // (cell * width))
    ch = max(1, min(d_ffn, ch, cap or d_ffn))
    if ch >= store_chunk:            # whole Zarr chunks: each is decompressed once per unit
        ch -= ch % store_chunk
    return ch


def count_unit(arr, tok: TokenArrays, n0: int, n1: int, ngram: bool, block: int, device: str = "cpu",
               dense_at: float | None = None) -> np.ndarray:
    """Exact counts [n1-n0, width] of one neuron chunk over all tokens.

    device: where the dense path runs ("cpu", "cuda", ...). dense_at: the fire rate from which a
    block takes the dense path (default: DENSE_AT on CPU, 0, every block, elsewhere); on CPU
    with the compiled kernels and no dense_at given, every block is counted by the kernel."""
    ch, W = n1 - n0, tok.width(ngram)
    keys = tok.keys(ngram)
    cells = ch * W
    counts = np.zeros(cells, count_dtype(tok.n))
    jit = _kernel(device, dense_at)
    if jit is not None:
        return _count_compiled(jit, arr, tok, n0, n1, keys, block, counts.reshape(ch, W))
    if dense_at is None:
        dense_at = DENSE_AT if device == "cpu" else 0.0
    sparse = _SparseCounts(counts, ch, W, len(keys))
    dense = None
    for s0, s1, raw in _blocks(arr, tok.n, n0, n1, block):
        cols = list(tok.block(keys, s0, s1))
        if raw.size and _fire_rate(raw, ch, s1 - s0) >= dense_at:
            if dense is None:
                dense = _DenseCounts(ch, W, device, counts.dtype)
            dense.add(raw, s1 - s0, cols)
        else:
            sparse.add(raw, s1 - s0, cols)
    sparse.flush()
    counts = counts.reshape(ch, W)
    if dense is not None:
        counts += dense.result()
    return counts


def _blocks(arr, n: int, n0: int, n1: int, block: int):
    """(s0, s1, bits [n1-n0, bytes] of rows s0..s1) for each block of `block` rows of neurons n0..n1."""
    for s0 in range(0, n, block):
        s1 = min(n, s0 + block)
        yield s0, s1, np.asarray(arr[n0:n1, s0 // 8:(s1 + 7) // 8])


def _count_compiled(jit, arr, tok: TokenArrays, n0: int, n1: int, keys: tuple[str, ...], block: int,
                    counts: np.ndarray) -> np.ndarray:
    for s0, s1, raw in _blocks(arr, tok.n, n0, n1, block):
        # whole little-endian 64-bit words per row, in one contiguous buffer
        raw = np.ascontiguousarray(np.pad(raw, ((0, 0), (0, -raw.shape[1] % 8))))
        cols = tok.block(keys, s0, s1)                                         # [keys, rows]
        jit.count_fires(raw.view("<u8"), s1 - s0, cols, counts)
    return counts


def _fire_rate(raw: np.ndarray, ch: int, n_rows: int) -> float:
    # bits past the last row of the block are zero or the next block's; either way a close estimate
    return int(np.bitwise_count(raw).sum(dtype=np.int64)) / max(1, ch * n_rows)


class _SparseCounts:
    """numpy: flat (neuron, column) ids of the fires, tallied by np.bincount into `counts`."""

    def __init__(self, counts: np.ndarray, ch: int, W: int, n_keys: int) -> None:
        self.counts, self.W = counts, W
        self.buf = np.empty(max(len(counts), 1 << 16), np.int64)   # flat ids waiting for a bincount
        self.used = 0
        # rows per slice so that one slice's tallies always fit an empty buffer
        self.step = max(8, (len(self.buf) // (ch * n_keys)) // 8 * 8)

    def add(self, raw: np.ndarray, n_rows: int, cols: list[np.ndarray]) -> None:
        buf, W = self.buf, self.W
        for a in range(0, n_rows, self.step):
            b = min(n_rows, a + self.step)
            ni, ri = np.nonzero(unpack(raw[:, a // 8:(b + 7) // 8], b - a, 0))
            f = len(ni)
            if not f:
                continue
            if self.used + f * len(cols) > len(buf):
                self.flush()
            base = ni * W
            for col in cols:
                np.add(base, col[a:b][ri], out=buf[self.used:self.used + f])
                self.used += f

    def flush(self) -> None:
        if self.used:
            self.counts += np.bincount(self.buf[:self.used], minlength=len(self.counts)).astype(self.counts.dtype)
            self.used = 0


class _DenseCounts:
    """torch on `device`: float32 counts [W, ch] by index_add_ of unpacked mask rows, moved into an
    integer total before FLOAT_EXACT rows have been added since the last move."""

    ROWS = 1 << 22   # (token, neuron) pairs per index_add_ source: 16 MB of float32

    def __init__(self, ch: int, W: int, device: str, dtype: np.dtype) -> None:
        import torch

        self.torch, self.device, self.ch = torch, torch.device(device), ch
        self.int = torch.int32 if dtype == np.int32 else torch.int64
        self.acc = torch.zeros(W, ch, dtype=torch.float32, device=self.device)
        self.total: np.ndarray | None = None
        self.since = 0   # rows added into acc since it was last moved into total
        self.shifts = torch.arange(8, dtype=torch.uint8, device=self.device)[None, :, None]
        self.step = max(8, self.ROWS // max(1, ch) // 8 * 8)

    def add(self, raw: np.ndarray, n_rows: int, cols: list[np.ndarray]) -> None:
        torch = self.torch
        # bytes as [bytes, neurons] so that the unpacked bits come out as [tokens, neurons] rows
        bytes_t = torch.from_numpy(np.ascontiguousarray(raw.T)).to(self.device, non_blocking=True)
        idx = [torch.from_numpy(c).to(self.device, non_blocking=True) for c in cols]   # int32 or int64 ids
        for a in range(0, n_rows, self.step):
            b = min(n_rows, a + self.step)
            if self.since + b - a >= FLOAT_EXACT:
                self._move()
            self.since += b - a
            byt = bytes_t[a // 8:(b + 7) // 8]
            bits = ((byt[:, None, :] >> self.shifts) & 1).reshape(-1, self.ch)[:b - a].to(torch.float32)
            for i in idx:
                self.acc.index_add_(0, i[a:b], bits)

    def _move(self) -> None:
        part = self.acc.to(self.int).T.cpu().numpy()
        self.total = part if self.total is None else self.total + part
        self.acc.zero_()
        self.since = 0

    def result(self) -> np.ndarray:
        """[ch, W] integer counts (a transposed view)."""
        self._move()
        return self.total
