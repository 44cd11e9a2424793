"""Corpus readers and the sequencer that turns documents into model inputs.

Readers stream documents and name `file:line` (or `file: row N`) for any bad record.
The sequencer is deterministic: the same corpus, tokenizer and settings give the same
token stream, which is what makes resume exact.

Memory and time follow the token budget, not the corpus: readers are pulled lazily (nothing
after the budget is read), a plain text file larger than one read block is streamed rather
than read whole, and each document is tokenized in pieces of at most PIECE_CHARS characters,
only as far as the sequencer can use its tokens (`doc_token_limit`).
"""
from __future__ import annotations

import codecs
import functools
import json
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ..errors import InputError
from ..files import sha256_file  # noqa: F401  (corpus files are hashed for the manifest)

SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".txt": "text", ".text": "text",
            ".md": "text", ".parquet": "parquet", ".py": "text"}


PIECE_CHARS = 1 << 16   # characters a document is tokenized in at most
READ_BLOCK = 1 << 20    # bytes of a text file read at a time; a larger file is streamed
_BOUNDARY = re.compile(r"\s(?=\S)")  # the last whitespace character before a word


@dataclass(frozen=True)
class Document:
    content: str | Callable[[], Iterator[str]]  # the text, or (a large text file) a reader of its parts
    domain: str
    doc_id: str
    source: str  # "file:line" or "file: row N", for messages

    @property
    def text(self) -> str:
        """The whole text (read whole: the ingest itself goes through pieces())."""
        return self.content if isinstance(self.content, str) else "".join(self.content())

    def is_blank(self) -> bool:
        """Only whitespace (str.strip's), reading a streamed file only up to its first word."""
        if isinstance(self.content, str):
            return not self.content or self.content.isspace()
        return not any(part and not part.isspace() for part in self.content())

    def pieces(self, size: int = PIECE_CHARS) -> Iterator[str]:
        """The text in consecutive pieces of at most `size` characters, cut before the last
        whitespace character preceding a word (so " word" starts the next piece whole, as
        byte-level BPE pre-tokenizes it); a stretch of `size` characters without such a
        boundary is cut at `size`. Tokenizing pieces separately can differ from tokenizing the
        whole text only at these cuts, one every ~64K characters: a merge across a cut is lost,
        and a SentencePiece-style tokenizer may add its word-start mark at each piece start."""
        parts = iter([self.content]) if isinstance(self.content, str) else self.content()
        try:
            carry = ""
            for part in parts:
                buf = carry + part
                pos = 0
                while len(buf) - pos > size:
                    cut = _cut(buf, pos, pos + size)
                    yield buf[pos:cut]
                    pos = cut
                carry = buf[pos:]
            if carry:
                yield carry
        finally:
            close = getattr(parts, "close", None)
            if close is not None:
                close()  # a streamed file is closed as soon as its reader stops, not when collected


def _cut(buf: str, lo: int, hi: int) -> int:
    """Where to end the piece buf[lo:...] of at most hi - lo characters (see Document.pieces)."""
    last = None
    for last in _BOUNDARY.finditer(buf, max(lo + 1, hi - 4096), hi + 1):  # near the end first: cheap
        pass
    if last is None:
        for last in _BOUNDARY.finditer(buf, lo + 1, hi + 1):
            pass
    return last.start() if last is not None else hi


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
            if doc.is_blank():
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
            if "text" not in rec:
                raise InputError(f"{where}: expected a string field 'text', it is missing")
            text = rec["text"]
            if not isinstance(text, str):
                raise InputError(f"{where}: expected a string field 'text', got {_json_type(text)}")
            dom = rec.get("domain")
            if dom is None:  # absent or null: the file's default, as for Parquet nulls
                dom = domain
            elif not isinstance(dom, str):  # str(5) would silently make a domain "5"
                raise InputError(f"{where}: expected a string field 'domain', got {_json_type(dom)}")
            doc_id = str(rec.get("id", f"{path.name}:{lineno}"))
            if "\\u" in line:  # a \ud800-style escape can make a lone surrogate, which no tokenizer
                try:            # or Parquet column takes
                    (text + dom + doc_id).encode("utf-8")
                except UnicodeEncodeError as e:
                    raise InputError(f"{where}: invalid Unicode ({e.reason} {e.object[e.start]!r})") from None
            yield Document(text, dom, doc_id, where)


def _json_type(value: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _read_text(path: Path, domain: str) -> Iterator[Document]:
    """A plain text file is one document: read whole if it fits one block, else streamed, so
    a huge one-line file costs memory and time only as far as the token budget reads."""
    with open(path, "rb") as f:
        head = f.read(READ_BLOCK + 1)
    if len(head) > READ_BLOCK:
        yield Document(functools.partial(_stream_text, path), domain, path.name, f"{path}:1")
        return
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        line = head.count(b"\n", 0, e.start) + 1
        raise InputError(f"{path}:{line}: not valid UTF-8 (byte offset {e.start})") from None
    yield Document(text, domain, path.name, f"{path}:1")


def _stream_text(path: Path) -> Iterator[str]:
    """A text file's characters, a block at a time; a bad byte is named by line and offset
    when the stream reaches it (a text file past the budget is never read, like JSONL lines)."""
    dec = codecs.getincrementaldecoder("utf-8")()
    offset = newlines = 0
    with open(path, "rb") as f:
        while True:
            data = f.read(READ_BLOCK)
            held = len(dec.getstate()[0])  # bytes of a character split by the previous block
            try:
                text = dec.decode(data, final=not data)
            except UnicodeDecodeError as e:
                at = offset - held + e.start
                line = newlines + data.count(b"\n", 0, max(e.start - held, 0)) + 1
                raise InputError(f"{path}:{line}: not valid UTF-8 (byte offset {at})") from None
            if not data:
                return
            offset += len(data)
            newlines += data.count(b"\n")
            if text:
                yield text


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
            if text is None:
                raise InputError(f"{where}: expected a string 'text', it is missing (null)")
            if not isinstance(text, str):
                raise InputError(f"{where}: expected a string 'text', got {type(text).__name__}")
            dom = data["domain"][i] if "domain" in data and data["domain"][i] is not None else domain
            if not isinstance(dom, str):  # an integer column, say: str() would invent domains
                raise InputError(f"{where}: expected a string 'domain', got {type(dom).__name__}")
            doc_id = data["id"][i] if "id" in data and data["id"][i] is not None else f"{path.name}:{row}"
            yield Document(text, dom, str(doc_id), where)
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


def doc_token_limit(special: SpecialTokens, seq_len: int, mode: str, max_tokens: int | None) -> int | None:
    """How many leading tokens of one document `sequences` can use, so tokenizing may stop there
    without changing its output: in document mode the truncation, `room`; in packed mode the
    budget plus one sequence: the first sequence that does not fit then sees the same tokens as
    with the whole document (so no shorter last sequence appears where the document really
    goes on, and the cut it reports is the same); None: all of them."""
    if mode == "document":
        return max(seq_len - len(special.prefix) - len(special.suffix), 1)
    return max_tokens + seq_len if max_tokens is not None else None


def sequences(docs: Iterable[tuple[int, list[int]]], special: SpecialTokens, seq_len: int,
              mode: str, max_tokens: int | None, cut: dict | None = None) -> Iterator[Sequence]:
    """Turn (doc index, token ids) into sequences of at most seq_len tokens.

    packed: documents joined by the separator, cut into full sequences, each with the
    tokenizer's prefix/suffix; the tail of the corpus gives one shorter last sequence.
    document: one sequence per document, truncated to seq_len.
    The budget counts tokens (rows); a sequence that would exceed it is not emitted: the
    budget is cut to whole sequences, and `cut` (if given) gets "tokens", the length of that
    first sequence left out, for the message that says so.
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
            if cut is not None:
                cut["tokens"] = n
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
        pos = 0  # cut the document's sequences by position, then drop them once: deleting each
        while len(buf) - pos >= room:  # from the front was quadratic in a long document
            seq = make(buf[pos:pos + room], buf_docs[pos:pos + room])
            if seq is None:
                return
            yield seq
            pos += room
        del buf[:pos], buf_docs[:pos]
    if buf:
        seq = make(buf, buf_docs)
        if seq is not None:
            yield seq


def tokenize_documents(docs: Iterable[Document], tokenizer, batch: int = 64,
                       max_doc_tokens: int | None = None,
                       batch_chars: int = 1 << 20) -> Iterator[tuple[Document, list[int]]]:
    """Tokenize without special tokens, in order, a batch of pieces at a time (the fast
    tokenizer parallelises a batch): at most `batch` pieces or `batch_chars` characters, so a
    huge document never goes to the tokenizer whole. A document's ids are its pieces' ids
    concatenated (see Document.pieces for where that can differ from one call on the whole
    text), at most max_doc_tokens of them: once a document has that many, no more of it is read."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # silence "sequence longer than model_max_length"
    waiting: deque[list] = deque()       # [doc, ids, all pieces queued] in corpus order
    pending: list[tuple[list, str]] = []  # (its document's entry, piece) not yet tokenized
    chars = 0

    def flush() -> Iterator[tuple[Document, list[int]]]:
        nonlocal chars
        if pending:
            enc = tokenizer([piece for _, piece in pending], add_special_tokens=False)["input_ids"]
            for (entry, _), ids in zip(pending, enc):
                room = len(ids) if max_doc_tokens is None else max_doc_tokens - len(entry[1])
                entry[1].extend(ids[:room])
            pending.clear()
            chars = 0
        while waiting and waiting[0][2]:
            doc, ids, _ = waiting.popleft()
            yield doc, ids

    for d in docs:
        entry = [d, [], False]
        waiting.append(entry)
        pieces = d.pieces()
        try:
            for piece in pieces:
                pending.append((entry, piece))
                chars += len(piece)
                if len(pending) >= batch or chars >= batch_chars:
                    yield from flush()
                    if max_doc_tokens is not None and len(entry[1]) >= max_doc_tokens:
                        break  # the sequencer uses none of the rest: do not read it
        finally:
            pieces.close()
        entry[2] = True
    yield from flush()
