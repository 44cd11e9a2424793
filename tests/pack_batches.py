"""Packing as ingest packs (a helper, not tests): boolean masks fed as row batches through
RowPacker and BlockAssembler."""
from __future__ import annotations

import numpy as np
import torch

from actdb.ingest.packing import BlockAssembler, RowPacker, pack_rows


def pack_in_batches(truth: np.ndarray, sizes, skip: int, block: int, packed: bool = False) -> dict[int, np.ndarray]:
    """truth bool [layers, rows, d] fed as row batches of `sizes` through RowPacker and
    BlockAssembler, as ingest does (skipping the first `skip` rows, and giving each block's buffer
    back once read) -> {block: bytes}. packed: a batch of a multiple of 8 rows goes in packed
    already (RowPacker.push_packed, as the sign rule's hook gives it)."""
    n_layers, _, d = truth.shape
    packers = [RowPacker(skip) for _ in range(n_layers)]
    asm = BlockAssembler(n_layers, d, block // 8, first_block=skip // block)
    blocks = {}
    pos = 0

    def take(full: list[tuple[int, np.ndarray]]) -> None:
        # as the writer does: each block read, then given back, so later blocks reuse its
        # buffer (stale bytes that must all be overwritten)
        for k, b in full:
            blocks[k] = b.copy()
            asm.release(b)
    for n in sizes:
        rows = [torch.from_numpy(truth[i, pos:pos + n]) for i in range(n_layers)]
        if packed and n and n % 8 == 0:
            parts = [p.push_packed(pack_rows(r)) for p, r in zip(packers, rows)]
        else:
            parts = [p.push(r) for p, r in zip(packers, rows)]
        pos += n
        if parts[0] is not None:
            take(asm.push(torch.stack(parts).numpy()))
    tail = [p.finish(d, torch.device("cpu")) for p in packers]
    if tail[0] is not None:
        take(asm.push(torch.stack(tail).numpy()))
    last = asm.finish()
    if last:
        blocks[last[0]] = last[1]
    return blocks
