"""Corpus readers and the sequencer that turns documents into model inputs.

Readers stream documents and name `file:line` (or `file: row N`) for any bad record.
The sequencer is deterministic: the same corpus, tokenizer and settings give the same
token stream, which is what makes resume exact.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..errors import InputError
from ..io import sha256_file  # noqa: F401  (corpus files are hashed for the manifest)

SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".txt": "text", ".text": "text",
            ".md": "text", ".parquet": "parquet", ".py": "text"}


@dataclass(frozen=True)
class Document:
    text: str
    domain: str
    doc_id: str
    source: str  # "file:line" or "file: row N", for messages


def corpus_format(path: Path) -> str:
    fmt = SUFFIXES.get(path.suffix.lower())
    return fmt or "text"


def check_corpus_files(paths: Iterable[str]) -> list[Path]:
    out = []
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise InputError(f"{p}: corpus file not found")
        if not path.is_file():
            raise InputError(f"{p}: not a file")
        out.append(path)
    if not out:
        raise InputError("no corpus files given")
    return out


def read_documents(paths: Iterable[Path], default_domain: str | None = None,
                   skip_empty: bool = False) -> Iterator[Document]:
    """All documents of all files, in order. Empty documents are an error unless skipped."""
    for path in paths:
        domain = default_domain or path.stem
        reader = {"jsonl": _read_jsonl, "text": _read_text, "parquet": _read_parquet}[corpus_format(path)]
        for doc in reader(path, domain):
            if not doc.text.strip():
                if skip_empty:
                    continue
                raise InputError(f"{doc.source}: empty document (pass --skip-empty to skip empty documents)")
            yield doc


def _read_jsonl(path: Path, domain: str) -> Iterator[Document]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{where}: not valid UTF-8 (byte {e.start} of the line)") from None
            if lineno == 1:
                line = line.removeprefix("\ufeff")  # a byte-order mark (Windows editors)
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
            except RecursionError:  # found by the fuzz test
                raise InputError(f"{where}: malformed JSON (nested too deeply)") from None
            if not isinstance(rec, dict):
                raise InputError(f"{where}: expected a JSON object, got {type(rec).__name__}")
            text = rec.get("text")
            if not isinstance(text, str):
                raise InputError(f"{where}: expected a string field 'text', got {type(text).__name__}")
            dom = str(rec.get("domain", domain))
            doc_id = str(rec.get("id", f"{path.name}:{lineno}"))
            if "\\u" in line:  # a \ud800-style escape can make a lone surrogate, which no tokenizer
                try:            # or Parquet column takes
                    (text + dom + doc_id).encode("utf-8")
                except UnicodeEncodeError as e:
                    raise InputError(f"{where}: invalid Unicode ({e.reason} {e.object[e.start]!r})") from None
            yield Document(text, dom, doc_id, where)


def _read_text(path: Path, domain: str) -> Iterator[Document]:
    """A plain text file is one document."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InputError(f"{path}:{line}: not valid UTF-8 (byte offset {e.start})") from None
    yield Document(text, domain, path.name, f"{path}:1")


def _read_parquet(path: Path, domain: str) -> Iterator[Document]:
    import pyarrow.parquet as pq

    def unreadable(e: Exception) -> InputError:
        # pyarrow's messages span lines; the first one says what is wrong
        return InputError(f"{path}: not a readable Parquet file ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})")

    try:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
    except Exception as e:  # pyarrow raises several types for a bad file
        raise unreadable(e) from None
    if "text" not in names:
        raise InputError(f"{path}: expected a 'text' column, got columns {names}")
    cols = [c for c in ("text", "domain", "id") if c in names]
    row = 0
    batches = pf.iter_batches(columns=cols, batch_size=1024)
    while True:
        try:  # found by the fuzz test: a corrupt page fails here, after the footer read fine
            batch = next(batches, None)
            data = batch.to_pydict() if batch is not None else None
        except Exception as e:  # OSError, ArrowInvalid, UnicodeDecodeError (invalid UTF-8 strings)
            raise unreadable(e) from None
        if data is None:
            return
        for i, text in enumerate(data["text"]):
            where = f"{path}: row {row}"
            if not isinstance(text, str):
                raise InputError(f"{where}: expected a string 'text', got {type(text).__name__}")
            dom = data["domain"][i] if "domain" in data and data["domain"][i] is not None else domain
            doc_id = data["id"][i] if "id" in data and data["id"][i] is not None else f"{path.name}:{row}"
            yield Document(text, str(dom), str(doc_id), where)
            row += 1


@dataclass(frozen=True)
class SpecialTokens:
    prefix: tuple[int, ...]   # what the tokenizer puts before a text (BOS, CLS)
    suffix: tuple[int, ...]   # and after it (EOS for some, SEP for BERT)
    separator: int | None     # between documents in packed mode


def special_tokens(tokenizer) -> SpecialTokens:
    """Find what the tokenizer adds around a text, by asking it rather than guessing."""
    probe = "hello world"
    with_sp = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    if not plain:
        raise InputError(f"tokenizer {type(tokenizer).__name__} turns {probe!r} into no tokens: "
                         "its vocabulary files are missing or do not match its class")
    for i in range(len(with_sp) - len(plain) + 1):
        if with_sp[i:i + len(plain)] == plain:
            prefix, suffix = tuple(with_sp[:i]), tuple(with_sp[i + len(plain):])
            break
    else:
        prefix, suffix = (), ()
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    return SpecialTokens(prefix, suffix, sep)


@dataclass
class Sequence:
    tokens: np.ndarray  # [len] int32
    docs: np.ndarray    # [len] int64, document index of every token


def sequences(docs: Iterable[tuple[int, list[int]]], special: SpecialTokens, seq_len: int,
              mode: str, max_tokens: int | None) -> Iterator[Sequence]:
    """Turn (doc index, token ids) into sequences of at most seq_len tokens.

    packed: documents joined by the separator, cut into full sequences, each with the
    tokenizer's prefix/suffix; the tail of the corpus gives one shorter last sequence.
    document: one sequence per document, truncated to seq_len.
    The budget counts tokens (rows); a sequence that would exceed it is not emitted.
    """
    pre, suf = list(special.prefix), list(special.suffix)
    room = seq_len - len(pre) - len(suf)
    if room < 1:
        raise InputError(f"--seq-len: expected more than {len(pre) + len(suf)} (the special tokens), got {seq_len}")
    used = 0

    def make(content: list[int], content_docs: list[int]) -> Sequence | None:
        nonlocal used
        n = len(pre) + len(content) + len(suf)
        if max_tokens is not None and used + n > max_tokens:
            return None
        used += n
        toks = np.asarray(pre + content + suf, dtype=np.int32)
        d = np.asarray([content_docs[0]] * len(pre) + content_docs + [content_docs[-1]] * len(suf), dtype=np.int64)
        return Sequence(toks, d)

    if mode == "document":
        for idx, ids in docs:
            if not ids:  # text that tokenizes to nothing (e.g. only a BOM): no sequence
                continue
            seq = make(list(ids[:room]), [idx] * min(len(ids), room))
            if seq is None:
                return
            yield seq
        return

    buf: list[int] = []
    buf_docs: list[int] = []
    for idx, ids in docs:
        buf.extend(ids)
        buf_docs.extend([idx] * len(ids))
        if special.separator is not None:
            buf.append(special.separator)
            buf_docs.append(idx)
        while len(buf) >= room:
            seq = make(buf[:room], buf_docs[:room])
            if seq is None:
                return
            yield seq
            del buf[:room], buf_docs[:room]
    if buf:
        seq = make(buf, buf_docs)
        if seq is not None:
            yield seq


def tokenize_documents(docs: Iterable[Document], tokenizer, batch: int = 64) -> Iterator[tuple[Document, list[int]]]:
    """Tokenize without special tokens, in batches (the fast tokenizer parallelises a batch)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # silence "sequence longer than model_max_length"
    pending: list[Document] = []

    def flush() -> Iterator[tuple[Document, list[int]]]:
        enc = tokenizer([d.text for d in pending], add_special_tokens=False)["input_ids"]
        for d, ids in zip(pending, enc):
            yield d, list(ids)
        pending.clear()

    for d in docs:
        pending.append(d)
        if len(pending) >= batch:
            yield from flush()
    if pending:
        yield from flush()
