"""Property-based tests (hypothesis): corpus readers round-trip arbitrary Unicode, empty and
huge documents; the sequencer keeps every token in order under any sequence length, mode
and budget; mask packing round-trips any batch sizes and row counts (not only multiples
of 8); a whole ingest with odd sequence lengths, batch and block sizes equals the plain
transformers forward."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actdb.ingest.corpus import SpecialTokens, read_documents, sequences
from actdb.errors import InputError
from actdb.store.bits import unpack
from pack_batches import pack_in_batches

PROPS = settings(max_examples=60, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# any Unicode scalar value (hypothesis leaves out surrogates, which UTF-8 cannot hold), with
# line and paragraph separators, NUL, BOM, combining marks and astral characters over-represented
texts = st.text(st.one_of(st.characters(codec="utf-8"), st.sampled_from("\n\r\u2028\u2029\x00\ufeff\u0301\U0001f600 \t")),
                max_size=40)


def huge(text: str) -> str:
    return (text or "x") * (1_000_000 // max(len(text), 1) + 1)  # >= 1 MB


@pytest.mark.slow
@PROPS
@given(docs=st.lists(st.tuples(texts, st.booleans()), min_size=1, max_size=8), fmt=st.sampled_from(["jsonl", "parquet"]))
def test_jsonl_and_parquet_round_trip(docs, fmt, tmp_path):
    """Documents come back exactly, in order, empty ones skipped (or named as an error)."""
    texts_ = [huge(t) if big else t for t, big in docs]
    p = tmp_path / f"c.{fmt}"
    if fmt == "jsonl":
        p.write_text("".join(json.dumps({"text": t, "domain": t[:3]}, ensure_ascii=False) + "\n" for t in texts_),
                     encoding="utf-8")
    else:
        pq.write_table(pa.table({"text": texts_, "domain": [t[:3] for t in texts_]}), p)
    got = list(read_documents([p], skip_empty=True))
    assert [d.text for d in got] == [t for t in texts_ if t.strip()]
    assert [d.domain for d in got] == [t[:3] for t in texts_ if t.strip()]
    if any(not t.strip() for t in texts_):
        with pytest.raises(InputError, match="empty document"):
            list(read_documents([p]))


@PROPS
@given(text=texts, big=st.booleans())
def test_text_file_is_one_document(text, big, tmp_path):
    text = huge(text) if big else text
    p = tmp_path / "c.txt"
    p.write_bytes(text.encode("utf-8"))
    got = list(read_documents([p], skip_empty=True))
    assert [d.text for d in got] == ([text] if text.strip() else [])


specials = st.sampled_from([SpecialTokens((), (), None), SpecialTokens((1,), (), 9), SpecialTokens((1,), (3,), 3),
                            SpecialTokens((), (), 0)])


@PROPS
@given(lengths=st.lists(st.integers(0, 40), max_size=12), sp=specials, seq_len=st.integers(2, 37),
       mode=st.sampled_from(["packed", "document"]), budget=st.one_of(st.none(), st.integers(0, 300)))
def test_sequences_keep_every_token_in_order(lengths, sp, seq_len, mode, budget):
    docs = [(i, list(range(1000 * (i + 1), 1000 * (i + 1) + n))) for i, n in enumerate(lengths)]
    room = seq_len - len(sp.prefix) - len(sp.suffix)
    if room < 1:
        with pytest.raises(InputError, match="--seq-len"):
            list(sequences(docs, sp, seq_len, mode, budget))
        return
    seqs = list(sequences(docs, sp, seq_len, mode, budget))
    n_pre, n_suf = len(sp.prefix), len(sp.suffix)
    for s in seqs:
        assert 1 <= len(s.tokens) <= seq_len and len(s.docs) == len(s.tokens)
        assert tuple(s.tokens[:n_pre]) == sp.prefix and tuple(s.tokens[len(s.tokens) - n_suf:]) == sp.suffix
        content = s.tokens[n_pre:len(s.tokens) - n_suf]
        # every content token belongs to the document recorded for it
        ok = [(t // 1000 - 1 == d) or t == sp.separator for t, d in zip(content, s.docs[n_pre:])]
        assert all(ok)
    assert budget is None or sum(len(s.tokens) for s in seqs) <= budget
    assert all(np.all(np.diff(np.concatenate([s.docs for s in seqs])) >= 0) for _ in [0] if seqs)
    content = [t for s in seqs for t in s.tokens[n_pre:len(s.tokens) - n_suf].tolist()]
    if mode == "packed":
        stream = [t for _, ids in docs for t in ids + ([sp.separator] if sp.separator is not None else [])]
        assert content == stream[:len(content)]  # a prefix of the stream: all of it without a budget
        if budget is None:
            assert len(content) == len(stream)
            assert all(len(s.tokens) == seq_len for s in seqs[:-1])
    else:
        want = [ids[:room] for _, ids in docs if ids]
        got = [s.tokens[n_pre:len(s.tokens) - n_suf].tolist() for s in seqs]
        assert got == want[:len(got)] and (budget is not None or len(got) == len(want))


@PROPS
@given(data=st.data(), d=st.integers(1, 20), block=st.integers(1, 6).map(lambda b: 8 * b),
       sizes=st.lists(st.integers(0, 29), min_size=1, max_size=15), n_layers=st.integers(1, 3))
def test_packing_round_trip_any_batches(data, d, block, sizes, n_layers):
    """Row batches of any size (most not multiples of 8) -> blocks -> unpack == the bits,
    including a resume that skips whole committed blocks."""
    total = sum(sizes)
    skip = data.draw(st.integers(0, total // block)) * block
    rng = np.random.default_rng(total * 7 + d)
    truth = rng.random((n_layers, total, d)) < rng.random(d)
    blocks = pack_in_batches(truth, sizes, skip, block)
    rows = total - skip
    if rows == 0:
        assert not blocks
        return
    assert sorted(blocks) == list(range(skip // block, skip // block + -(-rows // block)))
    assert all(b.shape[-1] == block // 8 for k, b in blocks.items() if k != max(blocks))
    stream = np.concatenate([blocks[k] for k in sorted(blocks)], axis=-1)
    assert stream.shape[-1] == -(-rows // 8)
    assert np.array_equal(unpack(stream, rows), truth[:, skip:].transpose(0, 2, 1))
    # the padding bits of the last byte are zero (a dead neuron stays all-zero bytes)
    assert not np.unpackbits(stream[..., -1:], axis=-1, bitorder="little")[..., rows - 8 * (stream.shape[-1] - 1):].any()


@pytest.mark.slow
@settings(max_examples=3, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(seq_len=st.sampled_from([5, 7, 13, 19]), batch=st.integers(1, 7), block=st.sampled_from([8, 24, 40]),
       mode=st.sampled_from(["packed", "document"]), n_docs=st.integers(1, 9))
def test_ingest_equals_reference_for_odd_shapes(seq_len, batch, block, mode, n_docs, model_dirs, tmp_path_factory):
    """A whole ingest (row counts not multiples of 8, blocks that split batches) equals the
    plain forward of tests/reference.py."""
    from reference import reference_masks
    from stores import assert_same, run_ingest
    from tiny import make_corpus

    tmp = tmp_path_factory.mktemp("odd")
    corpus = make_corpus(tmp / "c.jsonl", n_docs=n_docs, seed=seq_len * batch, min_words=1, max_words=30)
    store = run_ingest(model_dirs("llama"), corpus, tmp / "s", seq_len=seq_len, batch_size=batch, block_tokens=block,
                       mode=mode, capture="none")
    assert_same(store, reference_masks(model_dirs("llama"), "llama", store, batch_size=batch))
