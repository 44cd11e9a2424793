"""Phase 1 of ingest: the token, document and vocabulary tables, and the staging files
the forward passes read. Written in streaming fashion (memory does not grow with the
corpus); token part b holds exactly the rows of mask block b."""
from __future__ import annotations

import shutil
from array import array
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .corpus import Document, SpecialTokens, sequences
from ..errors import InputError
from ..settings import IngestSettings
from ..files import PARQUET_OPTIONS, atomic_path, write_parquet
from ..store.layout import (DOCS_FILE, STAGING, STAGING_IDS, STAGING_OFFSETS, TOKENS_DIR, VOCAB_FILE, doc_schema,
                            part_name, token_schema)

def write_token_tables(root: Path, tokenizer, tokenized: Iterable[tuple[Document, list[int]]],
                       special: SpecialTokens, s: IngestSettings) -> dict[str, Any]:
    """Token parts, docs.parquet (streamed, appears whole once complete) and vocab.parquet."""
    with atomic_path(root / DOCS_FILE) as docs_tmp:
        out = _write_tables(root, tokenized, special, s, docs_tmp)
    write_vocab(root, tokenizer)
    return out


def _write_tables(root: Path, tokenized: Iterable[tuple[Document, list[int]]], special: SpecialTokens,
                  s: IngestSettings, docs_path: Path) -> dict[str, Any]:
    from tqdm import tqdm

    for sub in (TOKENS_DIR, STAGING):
        shutil.rmtree(root / sub, ignore_errors=True)
        (root / sub).mkdir(parents=True)
    staging = root / STAGING
    domains: dict[str, int] = {}
    doc_domain = array("h")
    doc_meta: list[tuple[int, str, str, str]] = []
    docs_writer = pq.ParquetWriter(docs_path, doc_schema(), **PARQUET_OPTIONS)
    bar = tqdm(unit="doc", desc="tokenize", disable=not s.progress, dynamic_ncols=True)

    def numbered() -> Iterator[tuple[int, list[int]]]:
        for i, (doc, ids) in enumerate(tokenized):
            code = domains.setdefault(doc.domain, len(domains))
            if code > 32767:
                raise InputError(f"{doc.source}: more than 32768 distinct domains")
            doc_domain.append(code)
            doc_meta.append((i, doc.doc_id, doc.domain, doc.source))
            bar.update(1)
            yield i, ids

    pending: list[np.ndarray] = []   # columns of rows not yet written to a part
    n_pending = 0
    rows = n_seqs = 0
    max_doc = -1
    block = 0
    docs_written = 0

    def flush_docs(upto: int) -> None:
        nonlocal docs_written
        keep = [m for m in doc_meta if m[0] <= upto]
        if keep:
            docs_writer.write_table(pa.Table.from_pylist(
                [dict(doc=d, doc_id=i, domain=dom, source=src) for d, i, dom, src in keep], doc_schema()))
            docs_written += len(keep)
        del doc_meta[:len(keep)]

    def write_part(n: int) -> None:
        nonlocal pending, n_pending, block
        cols = np.concatenate(pending, axis=1) if len(pending) > 1 else pending[0]
        part, rest = cols[:, :n], cols[:, n:]
        dom_codes = np.frombuffer(doc_domain, dtype=np.int16)[part[4]]
        table = pa.table([pa.array(part[0]), pa.array(part[1]), pa.array(part[2].astype(np.int32)),
                          pa.array(part[3].astype(np.int32)), pa.array(part[4]),
                          pa.DictionaryArray.from_arrays(pa.array(dom_codes), pa.array(list(domains)))],
                         schema=token_schema())
        write_parquet(table, root / TOKENS_DIR / part_name(block))
        block += 1
        pending = [rest] if rest.shape[1] else []
        n_pending = rest.shape[1]

    with open(staging / STAGING_IDS, "wb") as f_ids, open(staging / STAGING_OFFSETS, "wb") as f_off:
        f_off.write(np.zeros(1, dtype=np.int64).tobytes())
        cut: dict[str, int] = {}
        for seq in sequences(numbered(), special, s.seq_len, s.mode, s.max_tokens, cut):
            n = len(seq.tokens)
            f_ids.write(seq.tokens.tobytes())
            cols = np.stack([np.arange(rows, rows + n), np.full(n, n_seqs), np.arange(n),
                             seq.tokens.astype(np.int64), seq.docs])           # [5, n] int64
            pending.append(cols)
            n_pending += n
            rows += n
            n_seqs += 1
            f_off.write(np.array([rows], dtype=np.int64).tobytes())
            max_doc = max(max_doc, int(seq.docs[-1]))
            while n_pending >= s.block_tokens:
                write_part(s.block_tokens)
            if len(doc_meta) > 10000:
                flush_docs(max_doc)
            bar.set_postfix(tokens=rows, refresh=False)
    if n_pending:
        write_part(n_pending)
    flush_docs(max_doc)
    docs_writer.close()
    bar.close()
    return {"n_tokens": rows, "n_sequences": n_seqs, "n_docs": max_doc + 1, "n_parts": block,
            "budget_cut": cut.get("tokens")}  # the first sequence --max-tokens left out, if any


def write_vocab(root: Path, tokenizer) -> None:
    n = len(tokenizer)
    ids = list(range(n))
    pieces = tokenizer.convert_ids_to_tokens(ids)
    texts = tokenizer.batch_decode([[i] for i in ids])
    table = pa.table({"token_id": pa.array(ids, pa.int32()),
                      "token": pa.array(texts, pa.string()),
                      "piece": pa.array([p if p is not None else "" for p in pieces], pa.string())})
    write_parquet(table, root / VOCAB_FILE)
