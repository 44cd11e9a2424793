"""The store's projection weights (docs/store-format.md), read with numpy alone (no torch on the read path).

projection.safetensors, written at ingest, holds w_out.L [d_ffn, d_model] (row n = neuron n's
update to the residual stream) and w_u [vocab, d_model], in the model's dtype.
score(t) = w_out[n] · w_u[t]; vocabulary rows the tokenizer does not have (padding) are masked.
"""
from __future__ import annotations

import json
import struct
from functools import cached_property
from pathlib import Path

import numpy as np

from ..errors import StoreError
from ..files import check_regular_file
from .layout import PROJECTION_FILE as FILE, VOCAB_FILE

_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": np.uint16}


class SafetensorsFile:
    """Tensors of a .safetensors file as float32 numpy arrays, memory-mapped (the format: an
    8-byte little-endian header length, a JSON header of dtype/shape/offsets, the raw data)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            check_regular_file(self.path)
            with open(self.path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                if n > 100 * 2**20:
                    raise ValueError(f"header of {n} bytes")
                self.header = json.loads(f.read(n))
        except (OSError, ValueError, struct.error) as e:
            raise StoreError(f"{self.path}: unreadable projection weights ({e})") from None
        self.header.pop("__metadata__", None)
        self.offset = 8 + n

    def keys(self) -> list[str]:
        return list(self.header)

    def get(self, key: str) -> np.ndarray:
        meta = self.header[key]
        dt = _DTYPES.get(meta["dtype"])
        if dt is None:
            raise StoreError(f"{self.path}: {key}: expected dtype F32, F16, BF16 or F64, got {meta['dtype']}")
        a, b = meta["data_offsets"]
        raw = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self.offset + a, shape=(b - a,))
        x = raw.view(dt).reshape(meta["shape"])
        if meta["dtype"] == "BF16":   # bfloat16 is the top half of a float32
            return (x.astype(np.uint32) << 16).view(np.float32)
        return x.astype(np.float32)


class Projection:
    """The projection weights of a store handle (a StoreReader), read once each, from files checked
    against their records."""

    def __init__(self, store) -> None:
        self.store = store
        self.root = Path(store.path)
        if not (self.root / FILE).exists():
            raise StoreError(f"{self.root / FILE}: missing (the store predates vocabulary projection)")
        self._w_out: dict[int, np.ndarray] = {}

    @cached_property
    def _tensors(self) -> "SafetensorsFile":
        return SafetensorsFile(self.store.projection_file())

    def w_out(self, layer: int) -> np.ndarray:
        """float32 [d_ffn, d_model], read once per layer."""
        if layer not in self._w_out:
            key = f"w_out.{layer}"
            if key not in self._tensors.keys():
                raise StoreError(f"layer {layer}: no FFN output rows in {self.root / FILE}")
            self._w_out[layer] = self._w(key)
        return self._w_out[layer]

    @cached_property
    def w_u(self) -> np.ndarray:
        """float32 [vocab, d_model]."""
        return self._w("w_u")

    def _w(self, key: str) -> np.ndarray:
        return self._tensors.get(key)

    @cached_property
    def valid(self) -> np.ndarray:
        """bool [vocab]: rows of the unembedding that are real tokens (not padding)."""
        ids = self.store.table(VOCAB_FILE, columns=["token_id"], arrow=True)["token_id"].to_numpy()
        ok = np.zeros(self.w_u.shape[0], dtype=bool)
        ok[ids[ids < len(ok)]] = True
        return ok

    def scores(self, layer: np.ndarray, neuron: np.ndarray, token_id: np.ndarray) -> np.ndarray:
        """score for each (layer, neuron, token) triple; NaN for padding rows or bad ids."""
        out = np.full(len(layer), np.nan)
        for l in np.unique(layer):
            sel = layer == l
            w = self.w_out(int(l))
            n, t = neuron[sel], token_id[sel]
            ok = (n >= 0) & (n < len(w)) & (t >= 0) & (t < len(self.valid))
            ok[ok] &= self.valid[t[ok]]
            vals = np.full(len(n), np.nan)
            vals[ok] = np.einsum("ij,ij->i", w[n[ok]].astype(np.float64), self.w_u[t[ok]].astype(np.float64))
            out[sel] = vals
        return out
