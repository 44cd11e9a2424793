"""Mask codec and chunk shape, chosen by measurement.

    .venv/bin/python benchmarks/bench_codec.py [--tokens 1048576] [--quick] [--sparse-tokens 262144]

Writes one OPT-125m-shaped layer (3072 FFN neurons x T tokens, default T = 2**20) of
synthetic fire masks, packed exactly as actdb stores them (uint8 [d_ffn, T/8], bit r%8
little-endian of byte r//8, see actdb/packing.py), into Zarr v3 arrays with each
candidate codec and chunk shape, the way actdb.store.MaskWriter writes them (one
write per token block, fill_value 0, write_empty_chunks False), and prints a table:
bytes on disk, ratio to the order-0 entropy bound, to a dense fp16 cache and to a
sparse coordinate list, write throughput, and read time of one neuron and one layer.
Codecs: actdb's own `actdb.bitrows` (actdb/codec.py: per row, Rice-coded gaps or zstd),
zstd at several levels, Blosc. First, the same codecs on two layers of the sparse
OPT-125m-shaped store that bench_queries.py builds (neurons firing independently at
0.4-2 %, where plain zstd is furthest from the bound).

Synthetic generator (seeded, numpy PCG64, seed 0). Token rows form packed sequences of
256 tokens (actdb's default seq_len); token ids are i.i.d. Zipf(1.1) over OPT's 50272
ids. Neurons are assigned at random positions in the layer (dead neurons are scattered,
not grouped, as in a real layer) to five classes:

  dead        40 %   never fire (Voita et al. 2023 find 30-60 %+ dead in early OPT layers)
  token       25 %   "token detectors": fire with prob 0.8 when the token id is in a random
                     subset of the vocabulary whose Zipf mass is freq/0.8, plus 1e-4 noise
  markov      22 %   context/topic neurons: two-state Markov chain, geometric on-runs of
                     mean L ~ log-uniform[1.5, 32] tokens, stationary firing rate = freq
  iid          10 %  independent Bernoulli(freq) per token (the hardest case for LZ codecs)
  positional   3 %   fire w.p. 0.9 when the position in the sequence lies in a random
                     window [a, b) (period 256, or 2048 for a third of them, as with
                     seq_len 2048), plus 1e-3 noise

freq (for token/markov/iid) is log-uniform in [1e-4, 0.5].

Entropy bound: sum over neurons of T * H(f_n) / 8 bytes, f_n the neuron's measured firing
rate (order-0 bound: it ignores the runs and token structure, so a codec that exploits
them can beat it; on the iid class it cannot). Fixed overhead = the zarr.json metadata.
Dense fp16 = T * d_ffn * 2 bytes; sparse coordinates = 8 bytes per firing.

Reads are warm (the files are in the page cache: this measures decode, not the disk):
one neuron = arr[n, :] averaged over 8 alive neurons, one layer = arr[:, :] (best of 2).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import sys

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from actdb.store.zarr_codec import BitRowsCodec  # noqa: E402

D_FFN = 3072
SEQ_LEN = 256
VOCAB = 50272
CLASS_SHARES = (("dead", 0.40), ("token", 0.25), ("markov", 0.22), ("iid", 0.10), ("positional", 0.03))


# --------------------------------------------------------------------------- generator
def _markov(rng, T, f, L):
    """bool[T]: two-state chain, on-runs geometric(mean L), off-runs geometric(mean L(1-f)/f)."""
    L0 = max(L * (1 - f) / f, 1.0)
    out = np.empty(0, dtype=bool)
    parts, total = [], 0
    state = rng.random() < f
    while total < T:
        n = int(T / (L + L0) * 1.3) + 16
        on = rng.geometric(1 / L, n)
        off = rng.geometric(1 / L0, n)
        lengths = np.empty(2 * n, dtype=np.int64)
        states = np.empty(2 * n, dtype=bool)
        if state:
            lengths[0::2], lengths[1::2] = on, off
            states[0::2], states[1::2] = True, False
        else:
            lengths[0::2], lengths[1::2] = off, on
            states[0::2], states[1::2] = False, True
        seg = np.repeat(states, lengths)
        parts.append(seg)
        total += seg.size
    out = np.concatenate(parts)[:T]
    return out


def generate(T: int, seed: int = 0):
    """-> packed uint8 [D_FFN, T/8], class name per neuron."""
    rng = np.random.default_rng(seed)
    classes = np.empty(D_FFN, dtype=object)
    perm = rng.permutation(D_FFN)
    start = 0
    for name, share in CLASS_SHARES:
        n = int(round(share * D_FFN)) if name != CLASS_SHARES[-1][0] else D_FFN - start
        classes[perm[start:start + n]] = name
        start += n
    ranks = np.arange(1, VOCAB + 1, dtype=np.float64)
    zipf = ranks ** -1.1
    zipf /= zipf.sum()
    tokens = rng.choice(VOCAB, size=T, p=zipf).astype(np.int32)
    pos = np.arange(T) % SEQ_LEN
    pos2048 = np.arange(T) % 2048
    packed = np.zeros((D_FFN, T // 8), dtype=np.uint8)
    for n in range(D_FFN):
        c = classes[n]
        if c == "dead":
            continue
        f = float(np.exp(rng.uniform(np.log(1e-4), np.log(0.5))))
        if c == "iid":
            m = rng.random(T) < f
        elif c == "markov":
            m = _markov(rng, T, f, float(np.exp(rng.uniform(np.log(1.5), np.log(32)))))
        elif c == "token":
            order = rng.permutation(VOCAB)
            k = int(np.searchsorted(np.cumsum(zipf[order]), min(f / 0.8, 1.0))) + 1
            member = np.zeros(VOCAB, dtype=bool)
            member[order[:k]] = True
            m = (member[tokens] & (rng.random(T) < 0.8)) | (rng.random(T) < 1e-4)
        else:  # positional
            period, p = (2048, pos2048) if rng.random() < 1 / 3 else (SEQ_LEN, pos)
            a = int(rng.integers(0, period))
            b = min(period, a + int(rng.integers(4, period // 4)))
            m = ((p >= a) & (p < b) & (rng.random(T) < 0.9)) | (rng.random(T) < 1e-3)
        packed[n] = np.packbits(m, bitorder="little")
    return packed, classes


def entropy_bytes(packed: np.ndarray, T: int) -> tuple[float, np.ndarray]:
    counts = np.concatenate([np.unpackbits(packed[i:i + 64], axis=1, bitorder="little").sum(axis=1)
                             for i in range(0, packed.shape[0], 64)]) if packed.shape[0] else np.zeros(0)
    f = counts / T
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(f * np.log2(f) + (1 - f) * np.log2(1 - f))
    h = np.nan_to_num(h)
    return float((T * h / 8).sum()), counts


# --------------------------------------------------------------------------- measurement
def disk_bytes(path: Path) -> tuple[int, int, int, int]:
    """(chunk bytes, metadata bytes, allocated bytes incl. fs blocks, chunk files)."""
    chunk = meta = alloc = files = 0
    for p in path.rglob("*"):
        if p.is_file():
            st = p.stat()
            alloc += st.st_blocks * 512
            if p.name == "zarr.json":
                meta += st.st_size
            else:
                chunk += st.st_size
                files += 1
    return chunk, meta, alloc, files


def measure(packed, root: Path, name: str, compressor, neurons: int, block_tokens: int, alive: np.ndarray):
    d, nbytes = packed.shape
    bb = block_tokens // 8
    path = root / name
    shutil.rmtree(path, ignore_errors=True)
    arr = zarr.create_array(zarr.storage.LocalStore(path), shape=(d, nbytes), dtype="uint8",
                            chunks=(min(neurons, d), bb), fill_value=0, compressors=compressor,
                            config={"write_empty_chunks": False})
    t, c = time.perf_counter(), time.process_time()
    for start in range(0, nbytes, bb):  # one write per token block, as MaskWriter does
        arr[:, start:start + bb] = packed[:, start:start + bb]
    w, wc = time.perf_counter() - t, time.process_time() - c
    chunk, meta, alloc, files = disk_bytes(path)
    ro = zarr.open_array(zarr.storage.LocalStore(path, read_only=True), mode="r")
    picks = alive[np.linspace(0, len(alive) - 1, 8).astype(int)]
    t = time.perf_counter()
    for n in picks:
        got = ro[int(n), :]
    r1 = (time.perf_counter() - t) / len(picks)
    assert np.array_equal(got, packed[int(picks[-1])])
    rl = float("inf")
    for _ in range(2):  # best of 2: single reads of a layer vary by 2-3x on this machine
        t = time.perf_counter()
        full = ro[:, :]
        rl = min(rl, time.perf_counter() - t)
        assert np.array_equal(full, packed)
        del full
    shutil.rmtree(path, ignore_errors=True)
    return dict(chunk=chunk, meta=meta, alloc=alloc, files=files, write_s=w, write_cpu_s=wc, read_neuron_s=r1,
                read_layer_s=rl)


def sparse_layers(root: Path, T: int, codecs: list, shape: tuple[int, int], forward_tokens: int) -> None:
    """The codecs on two layers of the OPT-125m-shaped store of bench_queries.py (the target's
    query store): layer 2 (median rate 0.4 %, 25 % token detectors, 5 % dead) and layer 9
    (median 2 %), where neurons fire mostly independently: the case zstd handles worst.
    "enc/fwd": CPU time to write the layer's chunks ÷ CPU time of a random OPT-125m forward
    pass over the same tokens divided by its 12 layers (one layer's share), in this run."""
    from bench_queries import forward_time, layer_mask, layer_spec, token_ids

    fwd_cpu = forward_time(T, forward_tokens)[1] / 12 if forward_tokens else float("nan")
    print(f"\n# forward CPU s per layer over {T:,} tokens (random OPT-125m, {forward_tokens:,} tokens timed): "
          f"{fwd_cpu:.1f}")
    ids, _, pos, perm = token_ids(T)
    print("\n| query-store layer | tokens | fire rate | entropy MB | " + " | ".join(
        f"{label}: MB, x entropy, write MB/s, enc/fwd CPU, read layer s" for label, _ in codecs) + " |")
    print("|---|---|---|---|" + "---|" * len(codecs))
    for layer in (2, 9):
        spec = layer_spec(layer, perm)
        packed = np.concatenate([np.packbits(layer_mask(spec, ids, pos, layer, a, min(T, a + 65536)), axis=1,
                                             bitorder="little") for a in range(0, T, 65536)], axis=1)
        ent, counts = entropy_bytes(packed, T)
        alive = np.flatnonzero(counts > 0)
        cells = []
        for _, comp in codecs:
            m = measure(packed, root, "s", comp, *shape, alive)
            cells.append(f"{m['chunk'] / 1e6:.2f}, **{m['chunk'] / ent:.3f}**, {packed.nbytes / 1e6 / m['write_s']:.0f}, "
                         f"{m['write_cpu_s'] / fwd_cpu:.3f}, {m['read_layer_s']:.2f}")
        print(f"| {layer} | {T:,} | {counts.sum() / (T * D_FFN):.4f} | {ent / 1e6:.2f} | " + " | ".join(cells) + " |",
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1 << 20)
    ap.add_argument("--slow-tokens", type=int, default=1 << 17,
                    help="tokens for the slow codecs (zstd 19); a prefix of the same data")
    ap.add_argument("--quick", action="store_true", help="fewer configurations")
    ap.add_argument("--sparse-tokens", type=int, default=1 << 18,
                    help="tokens of the two layers of the query benchmark's sparse store (bench_queries.py)")
    ap.add_argument("--skip-sparse", action="store_true", help="leave out the sparse-store layers")
    ap.add_argument("--forward-tokens", type=int, default=8192,
                    help="tokens of the OPT-125m forward pass timed for enc/fwd (0: not timed)")
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temp dir)")
    args = ap.parse_args()
    T = args.tokens // 131072 * 131072 or args.tokens // 8 * 8
    root = Path(args.dir or tempfile.mkdtemp(prefix="bench_codec_"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cpus, {platform.machine()}, "
          f"zarr {zarr.__version__}, numpy {np.__version__}")
    t = time.perf_counter()
    packed, classes = generate(T)
    print(f"# generated {D_FFN} x {T:,} tokens in {time.perf_counter() - t:.1f}s; packed {packed.nbytes / 1e6:.1f} MB")
    ent, counts = entropy_bytes(packed, T)
    alive = np.flatnonzero(counts > 0)
    firings = int(counts.sum())
    dense = T * D_FFN * 2
    sparse = 8 * firings
    print(f"# alive {len(alive)}/{D_FFN}, mean firing rate {counts.sum() / (T * D_FFN):.4f}; entropy bound "
          f"{ent / 1e6:.2f} MB; dense fp16 {dense / 1e6:.0f} MB; sparse coords {sparse / 1e6:.1f} MB")
    for c, _ in CLASS_SHARES:
        idx = np.flatnonzero(classes == c)
        e_c, _ = entropy_bytes(packed[idx], T)
        print(f"#   class {c:10s} {len(idx):5d} neurons, entropy bound {e_c / 1e6:7.2f} MB, "
              f"mean rate {counts[idx].mean() / T:.4f}")

    Z = lambda lv: ZstdCodec(level=lv)  # noqa: E731
    BR = lambda lv: BitRowsCodec(level=lv)  # noqa: E731
    B = lambda cname, lv, sh: BloscCodec(cname=cname, clevel=lv, shuffle=sh, typesize=1)  # noqa: E731
    default = (512, 32768)
    if not args.skip_sparse:
        sparse_layers(root, args.sparse_tokens, [("bitrows-1", BR(1)), ("bitrows-3", BR(3)), ("zstd-1", Z(1)),
                                                 ("zstd-3", Z(3)), ("zstd-9", Z(9))], default, args.forward_tokens)
    configs = []  # (label, compressor, neurons, block_tokens, tokens used)
    for label, comp in [("bitrows-1", BR(1)), ("bitrows-3", BR(3)), ("zstd-1", Z(1)), ("zstd-3", Z(3)), ("zstd-9", Z(9)),
                        ("blosc-zstd5-noshuffle", B("zstd", 5, "noshuffle")),
                        ("blosc-zstd5-bitshuffle", B("zstd", 5, "bitshuffle")),
                        ("blosc-lz4-5-noshuffle", B("lz4", 5, "noshuffle")),
                        ("blosc-lz4-5-bitshuffle", B("lz4", 5, "bitshuffle")),
                        ("none", None)]:
        configs.append((label, comp, *default, T))
    configs.append(("zstd-19", Z(19), *default, min(T, args.slow_tokens)))
    configs.append(("zstd-3", Z(3), *default, min(T, args.slow_tokens)))  # same prefix, to compare with 19
    shapes = [(n, b) for n in (64, 256, 512, 3072) for b in (8192, 32768, 131072)]
    if args.quick:
        shapes = [(64, 32768), (512, 8192), (512, 131072), (3072, 32768)]
    for n, b in shapes:
        if (n, b) != default:
            configs.append(("bitrows-1", BR(1), n, b, T))
            configs.append(("zstd-3", Z(3), n, b, T))
            if not args.quick:
                configs.append(("zstd-1", Z(1), n, b, T))

    print("\n| codec | chunk (neurons x tokens) | tokens | MB on disk | x entropy | + meta | alloc MB "
          "| 1/x of fp16 | x sparse coords | chunk files | write MB/s | read 1 neuron ms | read layer s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, comp, n, b, tt in configs:
        data = packed if tt == T else packed[:, :tt // 8]
        if tt == T:
            e_t, fir, al = ent, firings, alive
        else:
            e_t, cnt = entropy_bytes(data, tt)
            fir, al = int(cnt.sum()), np.flatnonzero(cnt > 0)
        m = measure(data, root, "a", comp, n, min(b, tt), al)
        print(f"| {label} | {n} x {b} | {tt:,} | {m['chunk'] / 1e6:.2f} | {m['chunk'] / e_t:.3f} | "
              f"{m['meta']} B | {m['alloc'] / 1e6:.2f} | {(tt * D_FFN * 2) / m['chunk']:.0f} | "
              f"{m['chunk'] / (8 * fir):.3f} | {m['files']} | {data.nbytes / 1e6 / m['write_s']:.0f} | "
              f"{m['read_neuron_s'] * 1e3:.1f} | {m['read_layer_s']:.2f} |", flush=True)

    # per class and dead-neuron cost
    per_class = [("bitrows-1", BR(1), 512, 32768), ("zstd-1", Z(1), 512, 32768), ("zstd-3", Z(3), 512, 32768), ("zstd-9", Z(9), 512, 32768),
                 ("zstd-1", Z(1), 512, 131072), ("zstd-3", Z(3), 512, 131072)]
    print("\n| class | neurons | entropy MB | " + " | ".join(f"{l} {n}x{b}: MB, x entropy" for l, _, n, b in per_class) + " |")
    print("|---|---|---|" + "---|" * len(per_class))
    for c, _ in CLASS_SHARES:
        idx = np.flatnonzero(classes == c)
        sub = np.ascontiguousarray(packed[idx])
        e_c, cnt = entropy_bytes(sub, T)
        al = np.flatnonzero(cnt > 0) if (cnt > 0).any() else np.array([0])
        cells = []
        for _, comp, n, b in per_class:
            m = measure(sub, root, "c", comp, n, b, al)
            cells.append(f"{m['chunk'] / 1e6:.3f}, " + (f"{m['chunk'] / e_c:.3f}" if e_c else "-"))
        print(f"| {c} | {len(idx)} | {e_c / 1e6:.2f} | " + " | ".join(cells) + " |", flush=True)
    full = measure(packed, root, "d", BR(1), *default, alive)["chunk"]
    only_alive = measure(np.ascontiguousarray(packed[alive]), root, "d", BR(1), *default,
                         np.arange(len(alive)))["chunk"]
    n_dead = D_FFN - len(alive)
    print(f"\n# dead-neuron cost (bitrows-1, 512 x 32768): layer {full:,} B, alive rows only {only_alive:,} B "
          f"-> {full - only_alive:,} B for {n_dead} dead neurons ({(full - only_alive) / max(n_dead, 1):.1f} B each, "
          f"vs {T // 8:,} B packed each)")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
