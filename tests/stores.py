"""Stores for tests (helpers, not tests): the hand-built store `known`, whose masks have known
answers (a dead neuron, a one-token detector, a positions-0..9 neuron, an oscillatory neuron, a
trigram detector...), several mask blocks so n-grams straddle block boundaries, a BOS prefix and a
last sequence shorter than seq_len; a tiny model ingested in this process (run_ingest); and masks
and indexes compared."""
from __future__ import annotations

from pathlib import Path

import numpy as np

import actdb
from actdb.index.build import read_index_info
from actdb.store.synthetic import write_store

T = 16
BOS = 2
D = 16
LAYERS = (0, 1, 2)


def known_masks(ids: np.ndarray, pos: np.ndarray, seq: np.ndarray, seed: int = 0) -> dict[int, np.ndarray]:
    """layer -> bool [D, rows]."""
    rng = np.random.default_rng(seed)
    n = len(ids)
    out = {}
    for layer in LAYERS:
        m = rng.random((D, n)) < rng.uniform(0.02, 0.6, size=(D, 1))
        m[0] = False                                        # dead
        if layer < 2:
            tok = 5 if layer == 0 else 6
            m[1] = ids == tok                               # fires only on one token
            m[2] = pos <= 9                                 # fires only on positions 0..9
            m[3] = ((pos // 4) % 2) == 0                    # oscillatory: 0-3, 8-11
            m[4] = np.isin(ids, (7, 8))                     # two-token detector
            m[5] = (ids == 9) & (rng.random(n) < 0.5)       # token 9 half of the time: not a detector
            prev1 = np.r_[-1, ids[:-1]]
            prev2 = np.r_[-1, -1, ids[:-2]]
            m[6] = (ids == 5) & (prev1 == 4) & (prev2 == 3) & (pos >= 2)  # trigram detector
            m[7] = (pos >= 5) & (seq % 40 != 1)             # weak positional: frequency 39/40 from pos 5
        out[layer] = m
    return out


def make_known(path: Path, prefix: bool = True) -> Path:
    """prefix=False: the same store from a tokenizer that adds no BOS (position 0 is a content token)."""
    rng = np.random.default_rng(7)
    lens = [T] * 40 + [7]
    n = sum(lens)
    ids = rng.integers(3, 12, size=n)
    starts = np.r_[0, np.cumsum(lens)[:-1]]
    pos = np.arange(n) - np.repeat(starts, lens)
    if prefix:
        ids[pos == 0] = BOS
    for s in starts[::3]:                                   # plant the trigram 3 4 5
        ids[s + 4:s + 7] = (3, 4, 5)
    masks = known_masks(ids, pos, np.repeat(np.arange(len(lens)), lens))
    doms = ["code" if i % 2 else "prose" for i in range(len(lens))]
    return write_store(path, ids, lens, lambda l, a, b: masks[l][:, a:b], layers=LAYERS, n_layers=4, d_ffn=D,
                       seq_len=T, vocab=[f"w{i}" for i in range(12)], prefix_tokens=(BOS,) if prefix else (), domains=doms,
                       block_tokens=64, neuron_chunk=8)


# ---------------------------------------------------------------- ingests of the tiny models (tests/tiny.py)

FAMILIES = ["opt", "gpt2", "llama", "mistral", "qwen2", "gemma", "gemma3", "gpt_neox", "bert"]


def run_ingest(model_dir, corpus, out, **kw):
    """Ingest `corpus` with the model in `model_dir` into `out` in this process (no index unless
    asked); the opened store."""
    settings = actdb.IngestSettings(model=str(model_dir), corpus=(str(corpus),), out=str(out),
                                    progress=False, **{"seq_len": 24, "batch_size": 3, "block_tokens": 256, "index": False, **kw})
    actdb.ingest.run(settings)
    return actdb.open(out)


def interrupted(run, monkeypatch, after_blocks: int) -> None:
    """Call run(), an ingest, so that it stops as a kill would when committing block `after_blocks`
    (its ingest state about to record after_blocks + 1 blocks done)."""
    import pytest

    from actdb.ingest import forward

    real = forward.write_state

    def killed(root, state):
        if state.blocks_done == after_blocks + 1:
            raise RuntimeError("killed")
        real(root, state)
    monkeypatch.setattr(forward, "write_state", killed)
    with pytest.raises(RuntimeError, match="killed"):
        run()
    monkeypatch.setattr(forward, "write_state", real)


def assert_same(store, ref):
    """Every layer's masks of `store` equal `ref` (layer -> bool [rows, d_ffn]), bit for bit."""
    for layer in store.manifest.layers:
        got = store.masks(layer)
        assert got.shape == ref[layer].shape
        diff = int((got != ref[layer]).sum())
        assert diff == 0, f"layer {layer}: {diff} bits differ"


def same_index(a: Path, b: Path) -> None:
    """Every table equal, and index.json's file digests equal (byte-identical files)."""
    import pyarrow.parquet as pq

    names = sorted(f.name for f in (a / "index").glob("*.parquet"))
    assert names == sorted(f.name for f in (b / "index").glob("*.parquet"))
    for n in names:
        assert pq.read_table(a / "index" / n).equals(pq.read_table(b / "index" / n)), n
    assert read_index_info(a).files == read_index_info(b).files

