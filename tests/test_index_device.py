"""Index counting on the device: the torch path of index/count.py gives the same
counts as the numpy path and as a direct numpy computation, and the same index files, on
CPU tensors here and on CUDA where there is one."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import actdb.index.count as count
from actdb import devices
from actdb import jit
from actdb.errors import InputError
from actdb.index.build import build_index
from actdb.index.tokens import TokenArrays
from actdb.store.reader import StoreReader
from actdb.store.synthetic import write_store
from stores import LAYERS, make_known, same_index
from tiers import slow_except

NUMPY_ONLY, TORCH_ONLY = 2.0, 0.0   # dense_at: no block is that dense / every block is


def direct_counts(mask: np.ndarray, tok: TokenArrays, ngram: bool) -> np.ndarray:
    """[neurons, width] by np.add.at over every (neuron, row, key): the definition itself."""
    out = np.zeros((mask.shape[0], tok.width(ngram)), np.int64)
    for k in tok.keys(ngram):
        col = tok.column(k)
        for i in range(mask.shape[0]):
            np.add.at(out[i], col[mask[i]], 1)
    return out


def mixed_store(path: Path) -> Path:
    """Rows from dead to nearly always firing, blocks from 1 % to 90 % fires, a ragged last block."""
    rng = np.random.default_rng(3)
    lens = [32] * 30 + [13]
    n = sum(lens)
    ids = rng.integers(0, 50, size=n)
    rate = np.r_[0.0, 0.002, 0.01, rng.uniform(0, 1, 21), 0.99, 1.0]
    block_rate = np.repeat(rng.choice([0.01, 0.2, 0.9], size=(n + 63) // 64), 64)[:n]
    masks = {l: rng.random((len(rate), n)) < np.minimum(1, rate[:, None] * (1 + block_rate[None, :] * l)) for l in (0, 1)}
    masks[1][5:9, :] = True
    return write_store(path, ids, lens, lambda l, a, b: masks[l][:, a:b], layers=(0, 1), n_layers=2,
                       d_ffn=len(rate), seq_len=32, vocab=[f"v{i}" for i in range(50)],
                       domains=["a" if i % 3 else "b" for i in range(len(lens))], block_tokens=64, neuron_chunk=8)


@pytest.fixture(scope="module", params=["known", "mixed"])
def store(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    return make_known(d / "s") if request.param == "known" else mixed_store(d / "s")


@pytest.mark.parametrize("ngram", [False, True])
def test_torch_counts_equal_numpy_and_direct(store, ngram, tmp_path, monkeypatch):
    """Cell for cell, on chunks that start inside a Zarr chunk; the float32 counts moved into the
    integer total many times over (FLOAT_EXACT lowered) stay exact."""
    st = StoreReader(store)
    m = st.manifest
    tok = TokenArrays(st, m, m.vocab_size + 1, tmp_path / "tmp")
    for layer in m.layers:
        arr = st.packed(layer)
        mask = np.unpackbits(np.asarray(arr[:, :]), axis=1, bitorder="little", count=m.n_tokens).astype(bool)
        want = direct_counts(mask, tok, ngram)
        for n0, n1 in ((0, m.d_ffn), (3, 11)):
            by_numpy = count.count_unit(arr, tok, n0, n1, ngram, m.block_tokens, "cpu", NUMPY_ONLY)
            by_torch = count.count_unit(arr, tok, n0, n1, ngram, m.block_tokens, "cpu", TORCH_ONLY)
            auto = count.count_unit(arr, tok, n0, n1, ngram, m.block_tokens)   # the compiled kernel
            for got in (by_numpy, by_torch, auto):
                assert got.dtype == np.int32
                np.testing.assert_array_equal(got, want[n0:n1])
        monkeypatch.setattr(count, "FLOAT_EXACT", 100)
        np.testing.assert_array_equal(count.count_unit(arr, tok, 0, m.d_ffn, ngram, m.block_tokens, "cpu", TORCH_ONLY),
                                      want)
        monkeypatch.undo()


@pytest.mark.parametrize("dense_at", slow_except([NUMPY_ONLY, TORCH_ONLY, count.DENSE_AT], count.DENSE_AT))
def test_index_files_equal_either_path(store, dense_at, tmp_path, monkeypatch):
    """The whole index, every file, whether the compiled kernels (the default) or numpy and torch
    (ACTDB_INDEX_JIT=0: counting with numpy, torch, or each block's faster one) built it."""
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(store, a, ignore=shutil.ignore_patterns("index"))
    shutil.copytree(store, b, ignore=shutil.ignore_patterns("index"))
    every = list(StoreReader(a).manifest.layers)   # n-gram columns on every layer too
    assert count.compiled() is not None, "the compiled index kernels did not load"
    build_index(a, progress=False, layers=every)
    monkeypatch.setenv("ACTDB_INDEX_JIT", "0")
    jit.compiled.cache_clear()
    try:
        assert count.compiled() is None
        monkeypatch.setattr(count, "DENSE_AT", dense_at)
        build_index(b, progress=False, layers=every)
    finally:
        monkeypatch.undo()
        jit.compiled.cache_clear()
    same_index(a, b)


def test_device_setting_errors():
    with pytest.raises(InputError, match="--device"):
        devices.device_name("not-a-device")
    assert devices.device_name("cpu") == "cpu"
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device"):
            devices.device_name("cuda")
        assert devices.device_name("auto") == "cpu"


@pytest.mark.gpu   # skipped without CUDA
def test_cuda_index_equals_cpu_index(tmp_path):
    """`actdb index --device cuda`: the same files as the CPU build (runs where CUDA is)."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here")
    a, b = make_known(tmp_path / "a"), make_known(tmp_path / "b")
    build_index(a, progress=False)
    build_index(b, progress=False, device="cuda")
    same_index(a, b)
    st = StoreReader(b)
    m = st.manifest
    tok = TokenArrays(st, m, m.vocab_size + 1, tmp_path / "tmp")
    arr = st.packed(LAYERS[0])
    np.testing.assert_array_equal(count.count_unit(arr, tok, 0, m.d_ffn, True, m.block_tokens, "cuda"),
                                  count.count_unit(arr, tok, 0, m.d_ffn, True, m.block_tokens, "cpu", NUMPY_ONLY))
