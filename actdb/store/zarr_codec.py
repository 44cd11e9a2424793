"""The `actdb.bitrows` mask codec (codec.py) as a Zarr v3 bytes-to-bytes codec.

Registered with zarr on import, and through the `zarr.codecs` entry point in
pyproject.toml, so a store's masks open with plain `zarr.open` wherever actdb is installed.
"""
from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from zarr.abc.codec import BytesBytesCodec
from zarr.core.common import JSON, parse_named_configuration
from zarr.registry import register_codec

from . import codec
from ..settings import ZSTD_LEVELS

if TYPE_CHECKING:
    from typing import Self

    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer

NAME = "actdb.bitrows"


@dataclass(frozen=True)
class BitRowsCodec(BytesBytesCodec):
    """Each row of the chunk (its last axis, one neuron) Rice-coded or zstd-coded, see codec.py."""

    is_fixed_size = False
    level: int = 1

    def __init__(self, *, level: int = 1) -> None:
        lo, hi = ZSTD_LEVELS
        if not isinstance(level, int) or isinstance(level, bool) or not lo <= level <= hi:
            raise ValueError(f"{NAME}: level: expected an integer in {lo}..{hi}, got {level!r}")
        object.__setattr__(self, "level", level)

    @classmethod
    def from_dict(cls, data: dict[str, JSON]) -> Self:
        _, config = parse_named_configuration(data, NAME)
        return cls(**config)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, JSON]:
        return {"name": NAME, "configuration": {"level": self.level}}

    def _encode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> Buffer:
        data = chunk_bytes.as_numpy_array()
        rows = math.prod(chunk_spec.shape[:-1])
        out = codec.encode(data.reshape(rows, -1), self.level)
        return chunk_spec.prototype.buffer.from_bytes(out)

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> Buffer:
        rows = codec.decode(chunk_bytes.as_numpy_array())
        expected = math.prod(chunk_spec.shape) * chunk_spec.dtype.to_native_dtype().itemsize
        if rows.size != expected:
            raise ValueError(f"{NAME}: expected a chunk of {expected} bytes, got {rows.size}")
        return chunk_spec.prototype.buffer.from_array_like(rows.reshape(-1).view(np.uint8))

    async def _encode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> Buffer:
        return await asyncio.to_thread(self._encode_sync, chunk_bytes, chunk_spec)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> Buffer:
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)

    def compute_encoded_size(self, _input_byte_length: int, _chunk_spec: ArraySpec) -> int:
        # variable-size output (is_fixed_size False): zarr asks this only of the fixed-size codecs of a
        # sharding index, as for its own ZstdCodec, which raises the same
        raise NotImplementedError


register_codec(NAME, BitRowsCodec)
