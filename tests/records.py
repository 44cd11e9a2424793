"""Tests' helpers for actdb's records: rewrite a JSON record as a (buggy) actdb would have
written it, checksum and all, so the checks below the checksum are what a test exercises;
record files planted into a store, as an ingest would have recorded them; and a valid manifest."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Iterable

from actdb.files import file_digest
from actdb.store.manifest import FORMAT_VERSION, CorpusFile, Manifest
from actdb.store.record import CHECKSUM_KEY, seal


def rewrite_record(path: Path, change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Apply `change` to the JSON record at `path` and write it back with a valid checksum."""
    raw = json.loads(Path(path).read_text())
    raw.pop(CHECKSUM_KEY, None)
    Path(path).write_text(seal(change(raw)))


def record_files(root: Path, paths: Iterable[Path], **manifest_changes: Any) -> None:
    """Record files written into a complete store after its ingest (their digests in
    checksums.json, whose sha256 the manifest holds), with `manifest_changes` to the manifest."""
    root = Path(root)
    rec = json.loads((root / "checksums.json").read_text())
    for p in paths:
        rec["files"][Path(p).relative_to(root).as_posix()] = file_digest(p)
    text = json.dumps(rec, indent=0, sort_keys=True)
    (root / "checksums.json").write_text(text)
    m = Manifest.read(root)
    dataclasses.replace(m, checksums_sha256=hashlib.sha256(text.encode()).hexdigest(), **manifest_changes).write(root)


def manifest(**kw) -> Manifest:
    """A valid manifest of a small store, with `kw` changed."""
    base = dict(format_version=FORMAT_VERSION, actdb_version="0", model="m", model_revision=None,
                weights_sha256="ab", architecture="opt", model_class="OPTForCausalLM", family="opt",
                fire_rule="r", n_layers=2, layers=(0, 1), d_ffn=8, d_model=4, vocab_size=10,
                dtype="float32", seq_len=16, mode="packed", prefix_tokens=(2,), suffix_tokens=(),
                separator_token=2, corpus=(CorpusFile("c.jsonl", "ff", 3),), max_tokens=None,
                n_tokens=100, n_sequences=7, n_docs=3, block_tokens=64, neuron_chunk=8, codec="zstd")
    return Manifest(**{**base, **kw})
