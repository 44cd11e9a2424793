"""Stores for the explorer's tests (tests/test_serve*.py): one whose vocabulary is hostile
HTML, and one ingested from a tiny real model, for the probe."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HOSTILE = "<script>alert(1)</script>"
VOCAB = ["<pad>", "<s>", "w2", HOSTILE, "a&b <i>x</i>", "\"q'", "w6", "w7"]


def make_hostile(path: Path, model: str = "synthetic"):
    """A store (of one layer) whose token 3 is `<script>alert(1)</script>`; neuron 0:1 fires exactly on it."""
    import actdb
    from actdb.index.build import build_index
    from actdb.store.synthetic import write_store

    rng = np.random.default_rng(5)
    lens = [16] * 12
    ids = rng.integers(2, len(VOCAB), size=sum(lens))
    ids[::16] = 1
    m = rng.random((8, len(ids))) < 0.3
    m[1] = ids == 3
    write_store(path, ids, lens, lambda l, a, b: m[:, a:b], layers=(0,), n_layers=1, d_ffn=8, seq_len=16,
                vocab=VOCAB, prefix_tokens=(1,), domains=["web"] * len(lens), block_tokens=64, neuron_chunk=8,
                model=model)
    build_index(path, progress=False)
    return actdb.open(path)


def make_probe_store(path: Path, model_dir: Path, corpus: Path, rules: tuple[str, ...] = ("sign",)):
    """A tiny LLaMA ingested one document per sequence, batch 1 (no padding), so a probe of a
    document's text must give exactly the store's masks of its sequence (under each rule)."""
    import actdb

    actdb.ingest.run(actdb.IngestSettings(model=str(model_dir), corpus=(str(corpus),), out=str(path), seq_len=32,
                                          mode="document", batch_size=1, block_tokens=256, progress=False,
                                          fire_rule=rules))
    return actdb.open(path)


def probe_corpus(path: Path) -> Path:
    from tiny import make_corpus

    return make_corpus(path, n_docs=9, seed=11, min_words=4, max_words=24)


def corpus_texts(path: Path) -> list[str]:
    return [json.loads(l)["text"] for l in Path(path).read_text().splitlines()]
