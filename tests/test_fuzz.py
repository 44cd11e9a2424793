"""Fuzzing (hypothesis, bounded for CI) of the corpus readers and the manifest loader:
whatever the bytes, they return documents / a validated manifest or raise actdb's own
one-line error (InputError / StoreError), never anything else. Crashes the fuzzing found
are kept below as regression tests."""
from __future__ import annotations

import io
import os
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from actdb.ingest.corpus import Document, read_documents
from actdb.errors import InputError, StoreError
from actdb.store.manifest import Manifest
from records import manifest as valid_manifest

# bounded: a few seconds per target on 2 cores (ACTDB_FUZZ_EXAMPLES=5000 for a longer run);
# derandomize keeps CI reproducible
FUZZ = settings(max_examples=int(os.environ.get("ACTDB_FUZZ_EXAMPLES", "150")), deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

JSONL = b'{"text": "a b", "domain": "x", "id": 1}\n{"text": "c"}\n\n{"text": "d e f"}\n'


def parquet_bytes() -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": ["p q", "r s t", "u"], "domain": ["a", None, "b"]}), buf)
    return buf.getvalue()


PARQUET = parquet_bytes()


def mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    """Flip bytes at positions (mod length) and optionally truncate."""
    b = bytearray(data)
    for pos, val in edits:
        if b:
            b[pos % len(b)] ^= val or 1
    return bytes(b[:cut] if cut is not None else b)


def read_all(path) -> list[Document]:
    """The readers' contract: documents, or InputError; nothing else escapes."""
    try:
        docs = list(read_documents([path], skip_empty=True))
    except InputError as e:
        assert "\n" not in str(e) and str(path) in str(e)
        return []
    for d in docs:
        assert isinstance(d.text, str) and d.text.strip() and isinstance(d.domain, str)
        d.text.encode("utf-8")  # the tokenizer gets valid Unicode (no lone surrogates)
    return docs


edits = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6)
cuts = st.one_of(st.none(), st.integers(0, 2_000))


@pytest.mark.slow
@FUZZ
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".jsonl", ".txt", ".parquet"]))
def test_readers_on_arbitrary_bytes(data, suffix, tmp_path):
    p = tmp_path / f"f{suffix}"
    p.write_bytes(data)
    read_all(p)


@pytest.mark.slow
@FUZZ
@given(e=edits, cut=cuts, which=st.sampled_from(["jsonl", "parquet"]))
def test_readers_on_mutated_valid_files(e, cut, which, tmp_path):
    p = tmp_path / f"f.{which}"
    p.write_bytes(mutate(JSONL if which == "jsonl" else PARQUET, e, cut))
    read_all(p)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12)


@pytest.mark.slow
@FUZZ
@given(text=st.text(max_size=300))
@example(text="[" * 100_000)
def test_manifest_loader_on_arbitrary_text(text):
    try:
        Manifest.from_json(text)
    except StoreError as e:
        assert "\n" not in str(e)


@pytest.mark.slow
@FUZZ
@given(changes=st.dictionaries(st.sampled_from(sorted(json.loads(valid_manifest().to_json()))), json_values,
                               max_size=4),
       drop=st.sets(st.sampled_from(sorted(json.loads(valid_manifest().to_json()))), max_size=2))
def test_manifest_loader_on_mutated_manifests(changes, drop):
    raw = {**json.loads(valid_manifest().to_json()), **changes}
    for k in drop:
        raw.pop(k, None)
    try:
        m = Manifest.from_dict(raw)
    except StoreError as e:
        assert "\n" not in str(e)
        return
    m.validate()
    assert Manifest.from_json(m.to_json()) == m  # what loads, round-trips


@pytest.mark.slow
@FUZZ
@given(data=st.binary(max_size=300))
def test_manifest_read_on_arbitrary_file(data, tmp_path):
    (tmp_path / "manifest.json").write_bytes(data)
    with pytest.raises(StoreError):
        Manifest.read(tmp_path)


# ---- regressions: crashes the fuzzing found, fixed ----

def test_regression_deeply_nested_json(tmp_path):
    """json.loads raised RecursionError (a traceback) on deeply nested input."""
    with pytest.raises(StoreError, match="nested too deeply"):
        Manifest.from_json("[" * 100_000)
    p = tmp_path / "deep.jsonl"
    p.write_text('{"text": "ok"}\n' + "[" * 100_000 + "\n")
    with pytest.raises(InputError, match=r"deep.jsonl:2: .*nested too deeply"):
        list(read_documents([p]))


def test_regression_manifest_that_is_a_folder(tmp_path):
    """An unreadable manifest.json (here a folder) raised IsADirectoryError."""
    (tmp_path / "manifest.json").mkdir()
    with pytest.raises(StoreError, match="manifest.json: unreadable"):
        Manifest.read(tmp_path)


def test_regression_corrupt_parquet_page(tmp_path):
    """A Parquet file whose footer reads but whose data page is corrupt raised OSError from
    iter_batches, and pyarrow's multi-line messages leaked into the one-line error."""
    p = tmp_path / "bad.parquet"
    p.write_bytes(mutate(PARQUET, [(4, 0)], None))
    with pytest.raises(InputError, match="bad.parquet: not a readable Parquet file") as e:
        list(read_documents([p]))
    assert "\n" not in str(e.value)


def test_regression_lone_surrogate_and_bom(tmp_path):
    """A \\ud800 escape gave the tokenizer a lone surrogate (TypeError with no file:line); a
    byte-order mark made line 1 'malformed JSON'."""
    p = tmp_path / "s.jsonl"
    p.write_text('\ufeff{"text": "fine \\u00e9"}\n{"text": "a \\ud800 b"}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"s.jsonl:2: invalid Unicode"):
        list(read_documents([p]))
    p.write_text('\ufeff{"text": "fine \\u00e9"}\n', encoding="utf-8")
    assert [d.text for d in read_documents([p])] == ["fine \u00e9"]
