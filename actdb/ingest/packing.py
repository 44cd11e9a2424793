"""Bit packing of fire masks along the token axis.

Layout: a layer is uint8 [d_ffn, ceil(rows/8)]; bit (r % 8) of byte r // 8 (little-endian
bit order, as numpy's bitorder="little") says whether the neuron fired on token row r.
Neuron-major packing keeps each neuron's bits contiguous, so a dead neuron is a run of
zero bytes (zero chunks are not even written) and one neuron reads without the others.
"""
from __future__ import annotations

import queue

import numpy as np
import torch

from ..jit import compiled as _compiled
from ..store.bits import unpack

_WEIGHTS: dict[torch.device, torch.Tensor] = {}


def _bit_weights(device: torch.device) -> torch.Tensor:
    w = _WEIGHTS.get(device)
    if w is None:
        w = _WEIGHTS[device] = (2 ** torch.arange(8, dtype=torch.uint8, device=device)).view(1, 8, 1)
    return w


def compiled():
    """The compiled kernels (ingest/kernels.py), or None: numba missing, or ACTDB_INGEST_JIT=0
    (the torch paths, kept as the reference the kernels are tested against)."""
    return _compiled("actdb.ingest.kernels", "ACTDB_INGEST_JIT")


def pack_rows(fired: torch.Tensor) -> torch.Tensor:
    """[n, d_ffn] bool, n a multiple of 8 -> [d_ffn, n/8] uint8, on fired's device."""
    n, f = fired.shape
    if n % 8:
        raise ValueError(f"pack_rows: expected a multiple of 8 rows, got {n}")
    jit = compiled() if fired.device.type == "cpu" else None
    if jit is not None:
        # one serial pass over the bool bytes (a view, no conversion) on CPU: split over two threads it
        # took longer, right after the compare's OpenMP region (benchmarks/RESULTS.md, "Ingest overhead, third pass")
        packed = torch.empty(n // 8, f, dtype=torch.uint8)                    # [n/8, d_ffn]
        jit.pack_bytes(fired.contiguous().view(torch.uint8).numpy(), packed.numpy())
    else:
        x = fired.view(n // 8, 8, f).to(torch.uint8)                        # [n/8, 8, d_ffn]
        packed = (x * _bit_weights(fired.device)).sum(dim=1, dtype=torch.uint8)  # [n/8, d_ffn]
    return packed.t().contiguous()                                           # [d_ffn, n/8]


def pack_positive(x: torch.Tensor) -> torch.Tensor | None:
    """The sign rule's bits, pack_rows(x > 0) for x [n, d_ffn] (or [batch, seq, d_ffn], rows in
    order), straight from the values in one compiled pass (ingest/kernels.py); None where that
    kernel does not apply (not CPU float32, rows not a multiple of 8, no numba): then compare and
    pack_rows. In a SmolLM2 ingest the compare and the packing took 0.98 ms a layer and batch, this
    0.6 (benchmarks/RESULTS.md, "Ingest overhead, sixth pass")."""
    jit = compiled()
    if jit is None or x.device.type != "cpu" or x.dtype != torch.float32:
        return None
    rows = x.detach().reshape(-1, x.shape[-1])                              # [n, d_ffn]
    n, f = rows.shape
    if n % 8 or not n:
        return None
    packed = torch.empty(f, n // 8, dtype=torch.uint8)                      # [d_ffn, n/8]
    jit.pack_positive(rows.contiguous().numpy(), packed.numpy())
    return packed


class RowPacker:
    """Packs a stream of [n, d_ffn] bool row batches into whole bytes.

    Rows left over after the last multiple of 8 wait (on the device) for the next batch;
    `skip` drops the first rows of the stream (already committed before a resume).
    """

    def __init__(self, skip: int = 0) -> None:
        self.carry: torch.Tensor | None = None
        self.skip = skip

    def push(self, rows: torch.Tensor) -> torch.Tensor | None:
        if self.skip:
            k = min(self.skip, rows.shape[0])
            rows, self.skip = rows[k:], self.skip - k
        if self.carry is not None and self.carry.shape[0]:
            rows = torch.cat([self.carry, rows])
        whole = rows.shape[0] // 8 * 8
        self.carry = rows[whole:]
        return pack_rows(rows[:whole]) if whole else None

    def push_packed(self, packed: torch.Tensor) -> torch.Tensor | None:
        """As push(rows) where packed = pack_rows(rows): passed on as it is unless rows wait or are
        skipped (the first batch of a resume, or after a batch of a row count not a multiple of 8)."""
        if self.skip or (self.carry is not None and self.carry.shape[0]):
            p = packed.cpu().numpy()                                            # [d_ffn, n/8]
            return self.push(torch.from_numpy(np.ascontiguousarray(unpack(p, 8 * p.shape[1]).T)).to(packed.device))
        return packed

    def finish(self, d_ffn: int, device: torch.device) -> torch.Tensor | None:
        """Pack the last < 8 rows, zero-padded."""
        if self.carry is None or not self.carry.shape[0]:
            return None
        pad = torch.zeros(8 - self.carry.shape[0], d_ffn, dtype=torch.bool, device=device)
        out = pack_rows(torch.cat([self.carry, pad]))
        self.carry = None
        return out


class BlockAssembler:
    """Collects packed bytes per layer on the host into fixed-size blocks (one Zarr
    chunk column each), so every chunk is written exactly once.

    A full block is handed out as the buffer itself, and a new one is taken from the blocks
    `release`d by their consumer (the writer thread): a fresh buffer per block cost its page
    faults, 0.4 s per 189 MB block of SmolLM2 on a VM (benchmarks/RESULTS.md, "Ingest overhead,
    third pass"). Buffers in use stay bounded by the consumer's queue."""

    def __init__(self, n_layers: int, d_ffn: int, block_bytes: int, first_block: int = 0) -> None:
        self.shape = (n_layers, d_ffn, block_bytes)
        self.spare: queue.SimpleQueue[np.ndarray] = queue.SimpleQueue()   # released by another thread
        self.buf = self._take()
        self.fill = 0
        self.block = first_block

    def _take(self) -> np.ndarray:
        try:
            return self.spare.get_nowait()
        except queue.Empty:
            # every byte of a block is written before it is handed out (finish hands out the filled part)
            return np.empty(self.shape, dtype=np.uint8)

    def release(self, block: np.ndarray) -> None:
        """Give back a block `push` handed out, once nothing reads it any more."""
        if block.shape == self.shape:
            self.spare.put(block)

    def push(self, packed: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """packed: [n_layers, d_ffn, m] -> full blocks as (index, [n_layers, d_ffn, block_bytes]),
        each the caller's until it releases it."""
        out = []
        m, pos = packed.shape[-1], 0
        bb = self.shape[-1]
        while pos < m:
            take = min(bb - self.fill, m - pos)
            self.buf[..., self.fill:self.fill + take] = packed[..., pos:pos + take]
            self.fill += take
            pos += take
            if self.fill == bb:
                out.append((self.block, self.buf))
                self.buf = self._take()
                self.block += 1
                self.fill = 0
        return out

    def finish(self) -> tuple[int, np.ndarray] | None:
        if not self.fill:
            return None
        out = (self.block, self.buf[..., :self.fill].copy())
        self.fill = 0
        return out
