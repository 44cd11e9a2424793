"""Write a complete store directly from numpy: hand-built masks for tests, and large
synthetic stores (OPT-125m shaped) for benchmarks. Same layout as `actdb ingest` writes."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa

from .manifest import FORMAT_VERSION, Manifest
from .writer import MaskWriter, codec_name, record_checksums, seal_checksums
from ..files import write_parquet
from .layout import DOCS_FILE, PENDING_CHECKSUMS, TOKENS_DIR, VOCAB_FILE, doc_schema, part_name, token_schema


def write_store(path: str | Path, token_ids: np.ndarray, seq_lengths: Sequence[int],
                mask_fn: Callable[[int, int, int], np.ndarray], *, layers: Sequence[int], n_layers: int,
                d_ffn: int, seq_len: int, vocab: Sequence[str], prefix_tokens: tuple[int, ...] = (),
                domains: Sequence[str] | None = None, block_tokens: int = 512, neuron_chunk: int = 256,
                mode: str = "packed", model: str = "synthetic", codec: str = "bitrows", level: int = 1) -> Path:
    """token_ids [n_tokens]; sequences are consecutive runs of seq_lengths (each <= seq_len);
    mask_fn(layer, start, stop) -> bool [d_ffn, stop-start] fire mask of those rows;
    domains: one per sequence (default "synthetic")."""
    root = Path(path)
    (root / TOKENS_DIR).mkdir(parents=True, exist_ok=True)
    token_ids = np.asarray(token_ids, dtype=np.int64)
    n = len(token_ids)
    lens = np.asarray(seq_lengths, dtype=np.int64)
    if lens.sum() != n or (lens > seq_len).any() or (lens < 1).any():
        raise ValueError("seq_lengths must be in 1..seq_len and sum to len(token_ids)")
    seq = np.repeat(np.arange(len(lens)), lens)
    starts = np.r_[0, np.cumsum(lens)[:-1]]
    pos = np.arange(n) - np.repeat(starts, lens)
    doms = list(domains) if domains is not None else ["synthetic"] * len(lens)
    names = sorted(set(doms))
    dom_code_seq = np.array([names.index(d) for d in doms], dtype=np.int16)
    for b, s0 in enumerate(range(0, n, block_tokens)):
        s1 = min(n, s0 + block_tokens)
        codes = dom_code_seq[seq[s0:s1]]
        write_parquet(pa.table([
            pa.array(np.arange(s0, s1)), pa.array(seq[s0:s1]), pa.array(pos[s0:s1].astype(np.int32)),
            pa.array(token_ids[s0:s1].astype(np.int32)), pa.array(seq[s0:s1]),
            pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(names))], schema=token_schema()),
            root / TOKENS_DIR / part_name(b))
    write_parquet(pa.table({"doc": np.arange(len(lens)), "doc_id": [f"s{i}" for i in range(len(lens))],
                                   "domain": doms, "source": ["synthetic"] * len(lens)}, schema=doc_schema()),
                         root / DOCS_FILE)
    write_parquet(pa.table({"token_id": pa.array(np.arange(len(vocab)), pa.int32()),
                                   "token": pa.array(list(vocab), pa.string()),
                                   "piece": pa.array(list(vocab), pa.string())}), root / VOCAB_FILE)
    writer = MaskWriter(root, tuple(layers), d_ffn, n, block_tokens, neuron_chunk, codec, level, create=True)
    for b, s0 in enumerate(range(0, n, block_tokens)):
        s1 = min(n, s0 + block_tokens)
        packed = np.stack([np.packbits(np.asarray(mask_fn(l, s0, s1), dtype=bool), axis=1, bitorder="little")
                           for l in layers])
        writer.write_block(b, packed)
    # the records a real ingest keeps, so a synthetic store is read with the same checks
    record_checksums(root, "synthetic", sorted(p for p in root.rglob("*") if p.is_file()))
    Manifest(format_version=FORMAT_VERSION, actdb_version="synthetic", model=model, model_revision=None,
             weights_sha256="0" * 64, architecture="synthetic", model_class="Synthetic", family="opt",
             fire_rule="synthetic masks", n_layers=n_layers, layers=tuple(layers), d_ffn=d_ffn, d_model=d_ffn // 4 or 1,
             vocab_size=len(vocab), dtype="float32", seq_len=seq_len, mode=mode,
             prefix_tokens=tuple(prefix_tokens), suffix_tokens=(), separator_token=None, corpus=(),
             max_tokens=None, n_tokens=n, n_sequences=len(lens), n_docs=len(lens), block_tokens=block_tokens,
             neuron_chunk=neuron_chunk, codec=codec_name(codec, level), checksums_sha256=seal_checksums(root)).write(root)
    shutil.rmtree(root / PENDING_CHECKSUMS)
    return root
