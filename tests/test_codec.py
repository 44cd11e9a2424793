"""The actdb.bitrows mask codec: exact round trip of any chunk, sizes near the entropy
bound on sparse i.i.d. rows and never above zstd on structured ones, one-line errors on
malformed chunks, and zarr finding the codec through the package's entry point."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numcodecs import zstd

from actdb.store import codec
from actdb.store.synthetic import write_store

PROPS = settings(max_examples=80, deadline=None, derandomize=True)


def entropy_bytes(bits: np.ndarray) -> float:
    """Order-0 bound of bool [R, N]: sum over rows of N * H(rate) / 8."""
    p = bits.mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = np.nan_to_num(-(p * np.log2(p) + (1 - p) * np.log2(1 - p)))
    return float((bits.shape[1] * h).sum() / 8)


def pack(bits: np.ndarray) -> np.ndarray:
    return np.packbits(bits, axis=1, bitorder="little")


def markov(rng: np.random.Generator, rows: int, n: int, rate: float, run: float) -> np.ndarray:
    """bool [rows, n]: on-runs of mean `run`, stationary rate `rate` (a context neuron)."""
    p_on_off = 1 / run
    p_off_on = rate * p_on_off / (1 - rate)
    out = np.zeros((rows, n), dtype=bool)
    state = rng.random(rows) < rate
    u = rng.random((rows, n))
    for t in range(n):
        state = np.where(state, u[:, t] >= p_on_off, u[:, t] < p_off_on)
        out[:, t] = state
    return out


CASES = {
    "iid 0.1%": lambda rng: rng.random((64, 8192)) < 0.001,
    "iid 2%": lambda rng: rng.random((64, 8192)) < 0.02,
    "log-uniform rates": lambda rng: rng.random((64, 8192)) < np.exp(rng.uniform(-9.2, -0.7, 64))[:, None],
    "dense 36%": lambda rng: rng.random((64, 8192)) < 0.36,
    "nearly always 98%": lambda rng: rng.random((64, 8192)) < 0.98,
    "dead, full and one-bit rows": lambda rng: np.stack([np.zeros(8192, bool), np.ones(8192, bool),
                                                         np.eye(1, 8192, 8191, dtype=bool)[0],
                                                         np.eye(1, 8192, 0, dtype=bool)[0]]),
    "markov runs": lambda rng: markov(rng, 32, 8192, 0.05, 12.0),
    # rows the structure trial moves to zstd between Rice rows of other k: the encoder cuts
    # their codes out of streams it has already written
    "markov among iid rows": lambda rng: np.where(
        (np.arange(48) % 3 == 1)[:, None], markov(rng, 48, 8192, 0.04, 10.0),
        rng.random((48, 8192)) < np.exp(rng.uniform(-7, -2, 48))[:, None]),
    "odd shape": lambda rng: rng.random((3, 8 * 37)) < 0.05,
}


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_exact(case):
    bits = CASES[case](np.random.default_rng(7))
    chunk = pack(bits)
    out = codec.decode(codec.encode(chunk))
    assert out.dtype == np.uint8 and out.shape == chunk.shape
    assert np.array_equal(out, chunk)


@PROPS
@given(rows=st.integers(1, 9), nbytes=st.integers(1, 70), rate=st.floats(0, 1),
       seed=st.integers(0, 2**32 - 1), level=st.sampled_from([1, 3]))
def test_round_trip_property(rows, nbytes, rate, seed, level):
    rng = np.random.default_rng(seed)
    rates = np.clip(rate * rng.uniform(0, 2, rows), 0, 1)[:, None]
    chunk = pack(rng.random((rows, nbytes * 8)) < rates)
    assert np.array_equal(codec.decode(codec.encode(chunk, level)), chunk)


@PROPS
@given(rows=st.integers(1, 30), nbytes=st.integers(1, 40), rate=st.floats(0, 1), group_bits=st.integers(8, 600),
       seed=st.integers(0, 2**32 - 1), data=st.data())
def test_row_range_decode_equals_the_slice(rows, nbytes, rate, group_bits, seed, data):
    """decode(rows=(a, b)) decodes only those rows' codes, across group boundaries (small groups
    forced), and gives exactly chunk[a:b]."""
    rng = np.random.default_rng(seed)
    rates = np.clip(rate ** 3 * rng.uniform(0, 2, rows), 0, 1)[:, None]
    chunk = pack(rng.random((rows, nbytes * 8)) < rates)
    saved, codec.GROUP_BITS = codec.GROUP_BITS, group_bits
    try:
        enc = codec.encode(chunk)
    finally:
        codec.GROUP_BITS = saved
    a = data.draw(st.integers(0, rows))
    b = data.draw(st.integers(a, rows))
    assert np.array_equal(codec.decode(enc, rows=(a, b)), chunk[a:b])


@pytest.mark.parametrize("rate", [0.001, 0.004, 0.02, 0.1])
def test_sparse_iid_rows_near_the_entropy_bound(rate):
    """At most 1.25 x the bound. zstd alone is 1.1-1.8 x here; the Rice rows ~1.01 x."""
    bits = np.random.default_rng(1).random((256, 32768)) < rate
    chunk = pack(bits)
    bound = entropy_bytes(bits)
    size = len(codec.encode(chunk))
    assert size <= 1.05 * bound + 64, (size / bound)
    assert size < len(zstd.compress(chunk, 1))


def test_structured_rows_stay_with_zstd():
    """Runs compress below the order-0 bound under zstd; the codec keeps that (within the
    header's bytes) instead of Rice-coding them at about the bound."""
    bits = markov(np.random.default_rng(2), 32, 32768, 0.05, 20.0)
    chunk = pack(bits)
    size, z = len(codec.encode(chunk)), len(zstd.compress(chunk, 1))
    assert size <= z + 256
    assert size < 0.8 * entropy_bytes(bits)


def test_mixed_chunk_takes_the_better_coding_per_row():
    """Half i.i.d. rows, half run rows: smaller than either coding applied to all rows."""
    rng = np.random.default_rng(3)
    iid, runs = rng.random((32, 32768)) < 0.01, markov(rng, 32, 32768, 0.05, 20.0)
    chunk = pack(np.concatenate([iid, runs]))
    size = len(codec.encode(chunk))
    assert size < len(zstd.compress(chunk, 1))
    assert size < len(codec.encode(pack(iid))) + len(zstd.compress(pack(runs), 1)) + 256
    head = codec._HEAD.unpack_from(codec.encode(chunk))
    assert head[4] > 0  # some rows were Rice-coded


def test_rice_k_is_the_exhaustive_optimum_on_iid_rows():
    rng = np.random.default_rng(4)
    for rate in (1e-4, 1e-3, 0.01, 0.05, 0.1, 0.15):
        pos = np.flatnonzero(rng.random(1 << 20) < rate)
        gaps = np.diff(pos, prepend=-1) - 1
        costs = [int((gaps >> k).sum()) + gaps.size * (k + 1) for k in range(20)]
        k = int(codec.rice_k(np.array([pos.size]), 1 << 20)[0])
        assert costs[k] == min(costs), (rate, k, int(np.argmin(costs)))


def _sections(data: bytes) -> tuple[tuple, np.ndarray, bytes]:
    """(head fields, header array, everything after the header) of an encoded chunk."""
    head = codec._HEAD.unpack_from(data)
    o = codec._HEAD.size
    return head, np.frombuffer(zstd.decompress(data[o:o + head[3]]), np.uint8).copy(), data[o + head[3]:]


def _assemble(head: tuple, header: np.ndarray, rest: bytes) -> bytes:
    h = zstd.compress(header, 1)
    return codec._HEAD.pack(head[0], head[1], head[2], len(h), head[4]) + h + rest


@pytest.mark.parametrize("path", ["compiled", "numpy"])
@pytest.mark.parametrize("damage", ["truncate header", "truncate body", "bad magic", "bad mode",
                                    "short remainder", "rows outside groups", "wrong row count"])
def test_malformed_chunks_raise_one_line_value_errors(damage, path, monkeypatch):
    set_path(monkeypatch, path)
    chunk = pack(np.random.default_rng(5).random((16, 4096)) < 0.01)
    data = codec.encode(chunk)
    head, header, rest = _sections(data)
    R, G = head[1], head[4]
    assert G >= 1
    if damage == "truncate header":
        data = data[:10]
    elif damage == "truncate body":
        data = data[:len(data) - len(rest) + 20]
    elif damage == "bad magic":
        data = b"XXXX" + data[4:]
    elif damage == "bad mode":
        header[0] = 9
        data = _assemble(head, header, rest)
    elif damage == "short remainder":   # the last group's remainder said to be 1 byte
        rb = header[6 * R + 8 * G:].view("<u4")
        cut = int(rb[-1]) - 1
        rb[-1] = 1
        data = _assemble(head, header, rest[:len(rest) - cut])
    elif damage == "rows outside groups":
        header[6 * R:6 * R + 4 * G].view("<u4")[-1] = 1
        data = _assemble(head, header, rest)
    else:
        data = _assemble((head[0], R - 1, *head[2:]), header, rest)
    with pytest.raises(ValueError, match=r"^bitrows chunk: ") as e:
        codec.decode(data)
    assert "\n" not in str(e.value)


def set_path(monkeypatch, path: str) -> None:
    """Run the codec by its compiled kernels (codec_kernels) or by the numpy reference."""
    if path == "compiled":
        from actdb.store import codec_kernels
        monkeypatch.setattr(codec, "_JIT", codec_kernels)
    else:
        monkeypatch.setattr(codec, "_JIT", False)


def both(fn, *args, **kwargs):
    """fn(*args) by the numpy reference and by the compiled kernels."""
    from actdb.store import codec_kernels

    saved = codec._JIT
    try:
        codec._JIT = False
        ref = fn(*args, **kwargs)
        codec._JIT = codec_kernels
        return ref, fn(*args, **kwargs)
    finally:
        codec._JIT = saved


@pytest.mark.parametrize("case", list(CASES))
def test_compiled_kernels_equal_the_numpy_reference(case):
    """The compiled encoder writes the numpy encoder's bytes, bit for bit, and the
    compiled decoder reads back what the numpy decoder reads, whole and by row ranges."""
    chunk = pack(CASES[case](np.random.default_rng(11)))
    for level in (1, 3):
        ref, fast = both(codec.encode, chunk, level)
        assert fast == ref
    R = chunk.shape[0]
    for rows in (None, (0, 1), (R // 3, R // 2 + 1), (R - 1, R), (0, R), (R // 2, R // 2)):
        ref, fast = both(codec.decode, codec.encode(chunk), rows=rows)
        want = chunk if rows is None else chunk[rows[0]:rows[1]]
        assert np.array_equal(ref, want) and np.array_equal(fast, want), (case, rows)


@PROPS
@given(rows=st.integers(1, 24), nbytes=st.integers(1, 50), rate=st.floats(0, 1), group_bits=st.integers(8, 400),
       structured=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_compiled_kernels_equal_the_numpy_reference_property(rows, nbytes, rate, group_bits, structured, seed):
    rng = np.random.default_rng(seed)
    if structured:   # runs: some rows go to zstd after the structure trial
        bits = markov(rng, rows, nbytes * 8, max(min(rate, 0.5), 1e-3), 6.0)
    else:
        bits = rng.random((rows, nbytes * 8)) < np.clip(rate * rng.uniform(0, 2, rows), 0, 1)[:, None]
    chunk = pack(bits)
    saved, codec.GROUP_BITS = codec.GROUP_BITS, group_bits
    try:
        ref, fast = both(codec.encode, chunk)
    finally:
        codec.GROUP_BITS = saved
    assert fast == ref
    a, b = sorted(rng.integers(0, rows + 1, 2).tolist())
    for r in (None, (a, b)):
        dec_ref, dec_fast = both(codec.decode, ref, rows=r)
        assert np.array_equal(dec_fast, dec_ref)


def test_dense_chunk_is_split_into_bounded_groups():
    """A chunk with many coded bits is coded in groups of ~GROUP_BITS (bounded memory)."""
    bits = np.random.default_rng(9).random((512, 32768)) < 0.1
    data = codec.encode(pack(bits))
    head, _, _ = _sections(data)
    assert head[4] == pytest.approx(bits.sum() / codec.GROUP_BITS, abs=2)
    assert np.array_equal(codec.decode(data), pack(bits))


def test_wide_sparse_rows_are_split_by_row_bits(monkeypatch):
    """Long rows (large --block-tokens) are grouped by row bits too: the decoder's bitmap stays bounded."""
    monkeypatch.setattr(codec, "GROUP_ROW_BITS", 4 * 8192)
    bits = np.random.default_rng(10).random((20, 8192)) < 0.001
    data = codec.encode(pack(bits))
    assert _sections(data)[0][4] == 5
    assert np.array_equal(codec.decode(data), pack(bits))


@pytest.mark.parametrize("which", ["bitrows", "zstd"])
def test_store_with_either_codec_reads_back(tmp_path, which):
    import actdb

    rng = np.random.default_rng(6)
    n, d = 1000, 40
    masks = {l: rng.random((d, n)) < rng.uniform(0, 0.3, d)[:, None] for l in (0, 1)}
    write_store(tmp_path / "s", rng.integers(0, 50, n), [100] * 10, lambda l, a, b: masks[l][:, a:b],
                layers=(0, 1), n_layers=2, d_ffn=d, seq_len=100, vocab=[f"t{i}" for i in range(50)],
                block_tokens=256, neuron_chunk=16, codec=which)
    st_ = actdb.open(tmp_path / "s")
    assert st_.manifest.codec == f"{which}(level=1)+crc32c"
    # bitrows arrays are read chunk file by chunk file, decoding only the rows asked for
    assert st_.packed(0).direct == (which == "bitrows")
    for l in (0, 1):
        assert np.array_equal(st_.neuron_masks(l, slice(None)), masks[l])
        for n0, n1, t0, t1 in [(0, 1, 0, n), (5, 23, 17, 901), (15, 17, 250, 260), (39, 40, 999, 1000), (3, 3, 0, 8)]:
            assert np.array_equal(st_.neuron_masks(l, slice(n0, n1), t0, t1), masks[l][n0:n1, t0:t1])


@pytest.mark.slow
def test_plain_zarr_finds_the_codec_through_the_entry_point(tmp_path):
    """A fresh interpreter that never imports actdb opens a bitrows array (pyproject's
    zarr.codecs entry point): the store's masks are readable with zarr alone."""
    import zarr

    from actdb.store.writer import mask_compressors

    x = pack(np.random.default_rng(8).random((20, 800)) < 0.02)
    a = zarr.create_array(tmp_path / "a", shape=x.shape, chunks=(8, 48), dtype="uint8", fill_value=0,
                          compressors=mask_compressors("bitrows", 1))
    a[:, :] = x
    np.save(tmp_path / "x.npy", x)
    code = ("import sys, numpy as np, zarr; before = 'actdb' in sys.modules; "
            "a = zarr.open_array(sys.argv[1], mode='r'); "
            "print(int(before), int(np.array_equal(a[:, :], np.load(sys.argv[2]))), type(a.metadata.codecs[1]).__name__)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a"), str(tmp_path / "x.npy")],
                         capture_output=True, text=True, check=True, cwd=tmp_path).stdout.split()
    assert out == ["0", "1", "BitRowsCodec"]


@pytest.mark.parametrize("codec_name", ["bitrows", "zstd"])
def test_mask_writer_stores_no_all_zero_chunk_and_reads_back_every_block(codec_name, tmp_path):
    """MaskWriter's blocks (a partial neuron chunk, a partial last block) read back through zarr
    equal the data; an all-zero chunk has no file, and one that an earlier write of the block
    left (a resumed ingest writes the block again) is removed."""
    import zarr

    from actdb.store.layout import MASKS_DIR, layer_name
    from actdb.store.writer import MaskWriter

    rng = np.random.default_rng(3)
    d, nt, bt = 700, 2 * 512 + 200, 512
    truth = np.zeros((2, d, (nt + 7) // 8), dtype=np.uint8)
    w = MaskWriter(tmp_path, (0, 4), d, nt, bt, 256, codec_name, 1, True)
    for b in range(3):
        cols = slice(b * bt // 8, min((b + 1) * bt // 8, truth.shape[-1]))
        data = rng.integers(0, 256, (2, d, cols.stop - cols.start), dtype=np.uint8)
        data[0, 256:512] = 0
        truth[..., cols] = data
        w.write_block(b, data)
    layer0 = tmp_path / MASKS_DIR / layer_name(0)
    chunk = lambda c, b: layer0 / w.arrays[0].metadata.encode_chunk_key((c, b))  # noqa: E731
    assert chunk(0, 1).is_file() and not chunk(1, 1).exists()
    # block 1 again, as a resume writes it, now with the first chunk of layer 0 all zero
    again = rng.integers(0, 256, (2, d, bt // 8), dtype=np.uint8)
    again[0, :256] = 0
    truth[..., bt // 8:2 * bt // 8] = again
    MaskWriter(tmp_path, (0, 4), d, nt, bt, 256, codec_name, 1, False).write_block(1, again)
    assert not chunk(0, 1).exists() and chunk(1, 1).is_file()
    from actdb.store import zarr_codec  # noqa: F401  (registers the bitrows codec)
    for i, layer in enumerate((0, 4)):
        arr = zarr.open_array(tmp_path / MASKS_DIR / layer_name(layer), mode="r")
        assert np.array_equal(arr[:], truth[i])
