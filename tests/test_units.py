"""Packing round-trip, sequencing, readers, manifest: each against a direct computation."""
import dataclasses
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from actdb.ingest.corpus import SpecialTokens, read_documents, sequences
from actdb.errors import InputError, StoreError
from actdb.store.manifest import CorpusFile, Manifest
from actdb.ingest.packing import pack_positive, pack_rows
from actdb.store.bits import unpack
from pack_batches import pack_in_batches
from records import manifest


@pytest.mark.parametrize("packed", [False, True])   # bool rows, or rows packed already (RowPacker.push_packed)
@pytest.mark.parametrize("seed", range(4))
def test_packing_stream_round_trip(seed, packed):
    """Random batch sizes, a row count not a multiple of 8, an odd block size, a resume skip."""
    rng = np.random.default_rng(seed)
    d, block = int(rng.integers(1, 40)), 8 * int(rng.integers(1, 9))
    n_layers = 2
    sizes = rng.integers(0, 30, size=int(rng.integers(1, 25)))
    if packed:   # whole bytes, but for one batch: passed on as packed before it, unpacked into the carry after
        odd = sizes[int(rng.integers(0, len(sizes)))]
        sizes = sizes // 8 * 8
        sizes[len(sizes) // 2] = odd
    total = int(sizes.sum())
    skip = int(rng.integers(0, max(total, 1))) // block * block if seed % 2 else 0
    truth = rng.random((n_layers, total, d)) < rng.random(d)     # [layers, rows, d]
    blocks = pack_in_batches(truth, sizes, skip, block, packed)
    if total - skip <= 0:
        assert not blocks
        return
    stream = np.concatenate([blocks[k] for k in sorted(blocks)], axis=-1)
    assert min(blocks) == skip // block and sorted(blocks) == list(range(min(blocks), max(blocks) + 1))
    got = unpack(stream, total - skip)                              # [layers, d, rows]
    assert np.array_equal(got, truth[:, skip:].transpose(0, 2, 1))


@pytest.mark.parametrize("jit", ["1", "0"])   # the compiled kernel (CPU default) and the torch path
def test_pack_rows_matches_numpy_packbits(jit, monkeypatch):
    import actdb.jit

    monkeypatch.setenv("ACTDB_INGEST_JIT", jit)
    actdb.jit.compiled.cache_clear()
    rng = np.random.default_rng(0)
    for n in (8, 16, 64, 8 * 37):
        x = rng.random((n, 13)) < 0.3
        assert np.array_equal(pack_rows(torch.from_numpy(x)).numpy(), np.packbits(x.T, axis=1, bitorder="little"))
    x = rng.random((64, 13)) < 0.3
    t = torch.from_numpy(rng.random((32, 40)) < 0.5)[:, 3:16]                # a non-contiguous view
    assert np.array_equal(pack_rows(t).numpy(), np.packbits(t.numpy().T, axis=1, bitorder="little"))
    actdb.jit.compiled.cache_clear()
    assert np.array_equal(unpack(np.packbits(x.T, axis=1, bitorder="little"), 50, 5), x[5:55].T)


def test_pack_positive_is_the_compare_then_pack_rows(monkeypatch):
    """The sign rule's compiled pass gives pack_rows(x > 0) bit for bit, the IEEE edge values included
    (NaN, -0.0, +-inf, subnormals), for row counts not a multiple of 64 and a [batch, seq, d] value;
    it declines (None) what it does not cover, and the callers then compare and pack."""
    import actdb.jit

    rng = np.random.default_rng(1)
    edge = np.array([np.nan, -0.0, 0.0, np.inf, -np.inf, 1e-45, -1e-45, 1.0, -1.0], dtype=np.float32)
    for n, d in ((8, 1), (64, 13), (72, 9), (8 * 37, 100), (2048, 40)):
        x = rng.standard_normal((n, d)).astype(np.float32)
        x.flat[rng.integers(0, x.size, size=x.size // 4)] = rng.choice(edge, size=x.size // 4)
        t = torch.from_numpy(x)
        got = pack_positive(t)
        assert got is not None and np.array_equal(got.numpy(), pack_rows(t > 0).numpy()), (n, d)
        assert got.numpy().any() and (~got.numpy()).any()
    x3 = torch.from_numpy(rng.standard_normal((3, 24, 7)).astype(np.float32))   # [batch, seq, d]
    assert np.array_equal(pack_positive(x3).numpy(), pack_rows(x3.reshape(-1, 7) > 0).numpy())
    view = torch.from_numpy(rng.standard_normal((16, 30)).astype(np.float32))[:, 4:11]   # not contiguous
    assert np.array_equal(pack_positive(view).numpy(), pack_rows(view > 0).numpy())
    assert pack_positive(torch.ones(12, 3)) is None                            # rows not a multiple of 8
    assert pack_positive(torch.ones(16, 3, dtype=torch.float64)) is None
    assert pack_positive(torch.ones(16, 3, dtype=torch.bfloat16)) is None
    monkeypatch.setenv("ACTDB_INGEST_JIT", "0")
    actdb.jit.compiled.cache_clear()
    try:
        assert pack_positive(torch.ones(16, 3)) is None
    finally:
        actdb.jit.compiled.cache_clear()


SP = SpecialTokens(prefix=(1,), suffix=(), separator=9)


def docs_of(*lengths):
    return [(i, list(range(100 * (i + 1), 100 * (i + 1) + n))) for i, n in enumerate(lengths)]


def test_packed_sequences_bos_each_full_length():
    seqs = list(sequences(docs_of(5, 7, 3), SP, seq_len=6, mode="packed", max_tokens=None))
    content = [t for _, ids in docs_of(5, 7, 3) for t in ids + [9]]
    assert all(s.tokens[0] == 1 for s in seqs)
    assert [len(s.tokens) for s in seqs][:-1] == [6] * (len(seqs) - 1)
    assert np.concatenate([s.tokens[1:] for s in seqs]).tolist() == content
    # BOS belongs to the document of the first content token
    assert all(s.docs[0] == s.docs[1] for s in seqs)


def test_document_mode_truncates_and_budget_counts_rows():
    seqs = list(sequences(docs_of(5, 12, 3, 0), SP, seq_len=6, mode="document", max_tokens=None))
    assert [s.tokens.tolist() for s in seqs] == [[1, 100, 101, 102, 103, 104], [1, 200, 201, 202, 203, 204],
                                                 [1, 300, 301, 302]]
    budget = list(sequences(docs_of(5, 12, 3), SP, seq_len=6, mode="document", max_tokens=11))
    assert sum(len(s.tokens) for s in budget) == 6
    packed = list(sequences(docs_of(50), SP, seq_len=6, mode="packed", max_tokens=20))
    assert [len(s.tokens) for s in packed] == [6, 6, 6]


def test_readers_jsonl_text_parquet(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "x y", "domain": "law", "id": "k1"}\n\n{"text": "z"}\n')
    (tmp_path / "b.txt").write_text("plain text\nfile")
    pq.write_table(pa.table({"text": ["p q", "r"], "domain": ["maths", None]}), tmp_path / "c.parquet")
    docs = list(read_documents([tmp_path / "a.jsonl", tmp_path / "b.txt", tmp_path / "c.parquet"]))
    assert [(d.text, d.domain, d.doc_id) for d in docs] == [
        ("x y", "law", "k1"), ("z", "a", "a.jsonl:3"), ("plain text\nfile", "b", "b.txt"),
        ("p q", "maths", "c.parquet:0"), ("r", "c", "c.parquet:1")]
    pq.write_table(pa.table({"body": ["p"]}), tmp_path / "d.parquet")
    with pytest.raises(InputError, match="expected a 'text' column"):
        list(read_documents([tmp_path / "d.parquet"]))


def test_manifest_round_trip_and_validation():
    m = manifest()
    again = Manifest.from_json(m.to_json())
    assert again == m and isinstance(again.corpus[0], CorpusFile) and again.layers == (0, 1)
    raw = m.to_dict()
    with pytest.raises(StoreError, match="format_version: expected 1 or 2 or 3 or 4, got 5 .*newer actdb"):
        Manifest.from_dict({**raw, "format_version": 5})
    # the file carries its checksum: an edited or damaged one is refused, whatever it changed
    text = m.to_json()
    assert json.loads(text)["checksum"].startswith("sha256:")
    with pytest.raises(StoreError, match="checksum differs from the record's content"):
        Manifest.from_json(text.replace('"n_tokens": 100', '"n_tokens": 101'))
    with pytest.raises(StoreError, match="checksum: expected the record's sha256, got nothing"):
        Manifest.from_json(json.dumps(raw))
    # older formats carried none, and still read; claiming an older format does not drop the check
    assert Manifest.from_json(json.dumps({**raw, "format_version": 3})).format_version == 3
    with pytest.raises(StoreError, match="checksum differs"):
        Manifest.from_json(text.replace('"format_version": 4', '"format_version": 3'))
    # version 1 (zstd-only masks, before the bitrows codec) still reads
    assert Manifest.from_dict({**raw, "format_version": 1}).format_version == 1
    # versions 1 and 2 (before fire rules) read as one sign rule
    old = Manifest.from_dict({**raw, "format_version": 2})
    assert old.rules == ("sign",) and old.rule_record("sign").definition == "r"
    rules = [{"name": "sign", "definition": "r"}, {"name": "top:0.99", "definition": "q", "thresholds": [0.5, 0.25]}]
    assert Manifest.from_dict({**raw, "fire_rules": rules}).rules == ("sign", "top:0.99")
    with pytest.raises(StoreError, match=r"fire_rules\[top:0.99\].thresholds: expected 2 numbers >= 0"):
        Manifest.from_dict({**raw, "fire_rules": [{**rules[1], "thresholds": [0.5]}]})
    with pytest.raises(StoreError, match=r"fire_rules.name: expected sign, abs>T .* or glu:SS .*, got 'top:2'"):
        Manifest.from_dict({**raw, "fire_rules": [{**rules[1], "name": "top:2"}]})
    with pytest.raises(StoreError, match="d_ffn: expected an integer, got 'x'"):
        Manifest.from_dict({**raw, "d_ffn": "x"})
    with pytest.raises(StoreError, match="layers: expected within 0..1"):
        Manifest.from_dict({**raw, "layers": [0, 5]})
    with pytest.raises(StoreError, match="n_tokens: expected a value, got nothing"):
        Manifest.from_dict({k: v for k, v in raw.items() if k != "n_tokens"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.n_tokens = 5
