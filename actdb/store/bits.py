"""The mask bit layout, read side (numpy only; ingest/packing.py packs on the model's device).

A layer is uint8 [d_ffn, ceil(rows/8)]; bit (r % 8) of byte r // 8 (little-endian bit order,
as numpy's bitorder="little") says whether the neuron fired on token row r.
"""
from __future__ import annotations

import numpy as np


def unpack(packed: np.ndarray, n_rows: int, start_bit: int = 0) -> np.ndarray:
    """[d, nbytes] uint8 -> [d, n_rows] bool, starting at bit start_bit of the first byte."""
    bits = np.unpackbits(packed, axis=-1, bitorder="little", count=start_bit + n_rows)
    return bits[..., start_bit:].view(bool)   # unpackbits gives 0/1 bytes: a bool view, no copy
