"""Mask chunk codec `actdb.bitrows`: each neuron row coded the cheaper of two ways.

Why: zstd on bit-packed masks sits at 1.2-1.8 x the order-0 entropy bound when a neuron
fires sparsely and without structure (i.i.d. at 0.1-5 %): its Huffman stage cannot spend
under one bit on a byte, and LZ matches of zero runs cost more than the run's entropy
(benchmarks/RESULTS.md). For such rows the gaps between fires are geometric, and a Rice
code of the gaps comes within ~1 % of the bound. Rows with sequential structure (runs,
positional windows) stay with zstd, which beats the order-0 bound on them, and so do
dense rows, whose bytes Huffman codes well. Where a sparse row shows structure, both
codings are measured and the smaller kept, so neither kind of row pays for the other.

Chunk layout (little-endian); the input is a C-order uint8 chunk of R rows x B bytes,
a row being one neuron's bits over the chunk's tokens (packing.py):

    b"ABR1"  u32 R  u32 B  u32 header_bytes  u32 G
    header   zstd(mode u8[R] | k u8[R] | count u32[R] | end_row u32[G] | unary_bytes u32[G] | rem_bytes u32[G])
    G groups, each: unary, then rem (byte-aligned)
    raw      zstd of the RAW rows concatenated in row order (the rest of the chunk)

Group g holds the Rice-coded rows among chunk rows end_row[g-1]..end_row[g] (a few
hundred thousand coded bits at most, so encoding and decoding hold a few MB at a time
whatever the chunk's density). In a group, `unary` has per coded bit, rows in order,
q = gap >> k zero bits and then a one bit; `rem` the low k bits of each gap (bit 0
first), rows grouped by k ascending and in order within a k.

Modes: ZERO (all-zero row), ONES (Rice over the set bits), ZEROS (Rice over the clear
bits, for rows that fire almost always), RAW (zstd). count: bits the Rice code lists;
gap: bits skipped since the previous listed bit of the row (the first: since bit 0).
"""
from __future__ import annotations

import os
import struct

import numpy as np
from numcodecs import zstd as _zstd

MAGIC = b"ABR1"
_HEAD = struct.Struct("<4sIIII")
# A group holds at most GROUP_BITS coded bits (temporaries ~50 bytes per coded bit) and
# GROUP_ROW_BITS row bits (the decoder's bool bitmap): ~30 MB a chunk whatever its density.
GROUP_BITS = 1 << 18
GROUP_ROW_BITS = 1 << 24
ZERO, ONES, ZEROS, RAW = 0, 1, 2, 3
# Denser rows go to zstd untried: zstd-1 on i.i.d. bits is 1.10 x the bound at 10 %, 1.02 x
# at 16 % and 1.01 x at 25 % (Huffman works once bytes are varied), while the Rice code's
# time grows with the fires.
RICE_MAX_DENSITY = 0.15
# A sparse row is also compressed by zstd alone (and the smaller kept) when it shows
# structure: its first-order (Markov) entropy, or the order-0 bound, clearly below the
# Rice cost. Rice on i.i.d. rows is within ~2 % of both, so those rows skip the trial.
STRUCTURE_MARGIN = 0.9


def set_bit_positions(flat: np.ndarray) -> np.ndarray:
    """uint8 [n] (bit i of byte j is bit 8j+i) -> int64 indices of the set bits, ascending."""
    nz = np.flatnonzero(flat != 0)                  # set bytes first: masks are mostly zero
    bits = np.unpackbits(flat[nz][:, None], axis=1, bitorder="little").reshape(-1)
    f = np.flatnonzero(bits != 0)
    out = nz[f >> 3]
    out <<= 3
    out += f & 7
    return out


def _entropy(p: np.ndarray) -> np.ndarray:
    """Binary entropy in bits, 0 log 0 = 0."""
    p = np.clip(p, 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    return np.nan_to_num(h, nan=0.0)


_LOG_PHI_1 = float(np.log((np.sqrt(5) - 1) / 2))


def rice_k(counts: np.ndarray, n_bits: int) -> np.ndarray:
    """The optimal Rice parameter for geometric gaps at rate counts / n_bits (Kiely 2004:
    k = max(0, 1 + floor(log2(log(phi - 1) / log(1 - p))))); exact on i.i.d. rows."""
    p = np.clip(counts / n_bits, 1e-12, 1 - 1e-12)
    k = 1 + np.floor(np.log2(_LOG_PHI_1 / np.log1p(-p)))
    return np.clip(k, 0, 30).astype(np.int64)


def _k_order(k: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fires regrouped by their row's k (rows stable within a k): (fire permutation,
    distinct k ascending, fires per distinct k). The remainder stream is in this order."""
    order = np.argsort(k, kind="stable")
    lens = n[order]
    starts = np.cumsum(n) - n
    perm = np.repeat(starts[order] - (np.cumsum(lens) - lens), lens) + np.arange(int(lens.sum()))
    kv, first = np.unique(k[order], return_index=True)
    sizes = np.diff(np.r_[np.cumsum(np.r_[0, lens])[first], lens.sum()])
    return perm, kv, sizes


def _pack_low_bits(values: np.ndarray, k: int) -> np.ndarray:
    """[m] non-negative ints < 2^k -> uint8 0/1 [m * k], bit 0 of each value first."""
    width = 1 if k <= 8 else 2 if k <= 16 else 4
    b = values.astype(f"<u{width}").view(np.uint8).reshape(-1, width)
    return np.unpackbits(b, axis=1, count=k, bitorder="little").reshape(-1)


def _read_fields(stream: np.ndarray, off: np.ndarray, k: np.ndarray) -> np.ndarray:
    """The k[i]-bit little-endian fields at bit offsets off[i] of a byte stream (k <= 56)."""
    padded = np.zeros(stream.size + 8, dtype=np.uint8)
    padded[:stream.size] = stream
    # every byte offset's 8-byte window, unaligned: one gather reads each field
    win = np.ndarray((stream.size + 1,), dtype="<u8", buffer=padded, strides=(1,))
    return ((win[off >> 3] >> (off & 7).astype(np.uint64)) & ((np.uint64(1) << k.astype(np.uint64)) - np.uint64(1))
            ).astype(np.int64)


def _jit():
    """The compiled kernels (codec_kernels), or None: numba missing, or ACTDB_CODEC_JIT=0 (the
    numpy path, kept as the reference the kernels are tested against)."""
    global _JIT
    if _JIT is None:
        _JIT = False
        if os.environ.get("ACTDB_CODEC_JIT", "1") != "0":
            try:
                from . import codec_kernels as _JIT
            except ImportError:
                pass
    return _JIT or None


_JIT = None


def _gaps(chunk: np.ndarray, rows: np.ndarray, inv: np.ndarray, n: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per listed bit of `rows` (ZEROS rows inverted), the bits skipped since the row's previous
    listed bit, rows in order (row i's from starts[i])."""
    n_bits = chunk.shape[1] * 8
    sub = chunk[rows]                                                     # [r, B] a copy
    sub[inv] = ~sub[inv]
    flat = set_bit_positions(sub.reshape(-1))                             # [fires] ascending
    gaps = np.empty_like(flat)
    gaps[1:] = flat[1:] - flat[:-1] - 1
    gaps[starts] = flat[starts] - np.arange(rows.size) * n_bits           # first fire of a row
    return gaps


def _rem_starts(kr: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Where each row's remainder fields start in the group's remainder stream (rows grouped by k
    ascending, in order within a k)."""
    order = np.argsort(kr, kind="stable")
    row_bits = (n * kr)[order]
    start = np.empty_like(kr)
    start[order] = np.cumsum(row_bits) - row_bits
    return start


def _rice_jit(jit, words: np.ndarray, B: int, rows: np.ndarray, inv: np.ndarray, kr: np.ndarray, n: np.ndarray,
              cost: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The compiled pass over `rows`: (unary words, rem words, u_at, rem_start, n11), where row
    i's unary codes are bits u_at[i]..u_at[i + 1] and its remainders start at rem_start[i];
    cost += each row's sum of gap >> k."""
    n_bits = 8 * B
    u_max = int(((n_bits >> kr) + n).sum())        # sum(gap >> k) <= sum(gap) >> k <= n_bits >> k
    r_bits = int((n * kr).sum())
    # one spare zero word past each stream's end, read by copy_bits' two-word windows
    unary, rem = np.zeros(u_max // 64 + 2, np.uint64), np.zeros(r_bits // 64 + 2, np.uint64)
    n11, u_at, rem_start = np.zeros_like(n), np.zeros(n.size + 1, np.int64), _rem_starts(kr, n)
    jit.rice_rows(words, B, rows, inv, kr, rem_start, unary, rem, n11, u_at)
    cost += np.diff(u_at) - n                     # a row's unary bits: sum(gap >> k), and a one per code
    return unary, rem, u_at, rem_start, n11


def _stream_bytes(words: np.ndarray, n_bits: int) -> bytes:
    return words.view(np.uint8)[:(n_bits + 7) // 8].tobytes()


def _jit_streams(jit, streams: tuple, keep: np.ndarray, kr: np.ndarray, n: np.ndarray) -> tuple[bytes, bytes]:
    """(unary, rem) bytes of _rice_jit's streams for the rows kept. Dropped rows' bit segments
    are cut out, which gives what a pass over the kept rows alone would write: their codes do
    not depend on the other rows, and the remainder stream keeps its order (by k, then row)."""
    unary, rem, u_at, rem_start, _ = streams
    if keep.all():
        return _stream_bytes(unary, int(u_at[-1])), _stream_bytes(rem, int((n * kr).sum()))
    ku = np.flatnonzero(keep)
    u_new = np.zeros_like(unary)
    u_bits = jit.copy_bits(unary, u_at[ku], u_at[ku + 1] - u_at[ku], u_new)
    in_order = ku[np.argsort(rem_start[ku], kind="stable")]               # kept rows in stream order
    r_new = np.zeros_like(rem)
    r_bits = jit.copy_bits(rem, rem_start[in_order], (n * kr)[in_order], r_new)
    return _stream_bytes(u_new, u_bits), _stream_bytes(r_new, r_bits)


def _encode_group(chunk: np.ndarray, words: np.ndarray | None, rows: np.ndarray, mode: np.ndarray,
                  coded: np.ndarray, k: np.ndarray, level: int) -> tuple[bytes, bytes]:
    """Rice-code `rows` (ONES or ZEROS, coded > 0) of the chunk: (unary, rem) bytes. Rows
    that show structure and are smaller under zstd are moved to RAW (mode, coded updated).
    words: the chunk as codec_kernels.chunk_words() for the compiled path, else None."""
    n_bits = chunk.shape[1] * 8
    jit = _jit() if words is not None else None
    inv = mode[rows] == ZEROS
    n = coded[rows]
    kr = rice_k(n, n_bits)
    cost = n * (kr + 1)                                                   # exact Rice bits per row
    if jit is not None:
        # one pass writes the streams while it measures the rows; the rows that the structure
        # trial below moves to zstd are then cut out of them
        streams = _rice_jit(jit, words, chunk.shape[1], rows, inv, kr, n, cost)
        n11 = streams[4]
    else:
        starts = np.cumsum(n) - n
        gaps = _gaps(chunk, rows, inv, n, starts)
        cost += np.add.reduceat(gaps >> np.repeat(kr, n), starts)
        # structure test: first-order entropy from adjacent pairs (a zero gap after a fire)
        adj = gaps == 0
        adj[starts] = False
        n11 = np.add.reduceat(adj, starts)
    h1 = n * _entropy(n11 / n) + (n_bits - n) * _entropy((n - n11) / np.maximum(n_bits - n, 1))
    h0 = n_bits * _entropy(n / n_bits)
    for j in np.flatnonzero(STRUCTURE_MARGIN * cost > np.minimum(h0, h1)):
        if cost[j] / 8 >= len(_zstd.compress(chunk[rows[j]], level)):
            mode[rows[j]], coded[rows[j]] = RAW, 0
    keep = mode[rows] != RAW
    k[rows[keep]] = kr[keep]
    if jit is not None:
        return _jit_streams(jit, streams, keep, kr, n)
    if not keep.all():
        gaps = gaps[np.repeat(keep, n)]
        kr, n, cost = kr[keep], n[keep], cost[keep]
    u_bits, r_bits = int((cost - n * kr).sum()), int((n * kr).sum())  # sum(gap >> k) + an end bit per code; k per code
    unary, rem = np.zeros((u_bits + 7) // 8, np.uint8), np.zeros((r_bits + 7) // 8, np.uint8)
    kf = np.repeat(kr, n)
    q = gaps >> kf
    bits = np.zeros(int(q.sum()) + q.size, dtype=bool)
    bits[np.cumsum(q + 1) - 1] = True
    unary[:] = np.packbits(bits, bitorder="little")
    perm, kvals, sizes = _k_order(kr, n)
    g_sorted = gaps[perm]
    parts, at = [], 0
    for kv, m in zip(kvals.tolist(), sizes.tolist()):
        if kv:
            parts.append(_pack_low_bits(g_sorted[at:at + m], kv))
        at += m
    if parts:
        rem[:] = np.packbits(np.concatenate(parts), bitorder="little")
    return unary.tobytes(), rem.tobytes()


def encode(chunk: np.ndarray, level: int = 1) -> bytes:
    """uint8 [R, B] -> the chunk layout above."""
    chunk = np.ascontiguousarray(chunk, dtype=np.uint8)
    R, B = chunk.shape
    n_bits = B * 8
    jit = _jit()
    words = jit.chunk_words(chunk) if jit is not None else None
    counts = jit.row_counts(words) if jit is not None else np.bitwise_count(chunk).sum(axis=1, dtype=np.int64)  # [R]
    mode = np.full(R, RAW, dtype=np.uint8)
    mode[counts <= RICE_MAX_DENSITY * n_bits] = ONES
    mode[counts >= (1 - RICE_MAX_DENSITY) * n_bits] = ZEROS
    mode[counts == 0] = ZERO
    # bits the Rice code lists: the set ones, or the clear ones of rows that nearly always fire
    coded = np.select([mode == ONES, mode == ZEROS], [counts, n_bits - counts], 0)
    k = np.zeros(R, dtype=np.int64)

    cand = np.flatnonzero(coded > 0)                                      # all-ones rows: ZEROS, no bits
    by_bits = (np.cumsum(coded[cand]) - coded[cand]) // GROUP_BITS        # consecutive rows in each group
    by_rows = np.arange(cand.size) // max(1, GROUP_ROW_BITS // n_bits)
    new = np.r_[True, (by_bits[1:] != by_bits[:-1]) | (by_rows[1:] != by_rows[:-1]), True]
    bounds = np.flatnonzero(new) if cand.size else np.zeros(1, np.int64)
    end_row, streams = [], []
    for g0, g1 in zip(bounds[:-1], bounds[1:]):
        streams += _encode_group(chunk, words, cand[g0:g1], mode, coded, k, level)
        end_row.append(int(cand[g1 - 1]) + 1)
    G = len(end_row)
    sizes = np.array([len(b) for b in streams], dtype="<u4").reshape(G, 2)
    header = _zstd.compress(np.concatenate([
        mode, k.astype(np.uint8), coded.astype("<u4").view(np.uint8), np.array(end_row, dtype="<u4").view(np.uint8),
        np.ascontiguousarray(sizes[:, 0]).view(np.uint8), np.ascontiguousarray(sizes[:, 1]).view(np.uint8)]), level)
    raw_rows = chunk[mode == RAW]
    raw_b = _zstd.compress(raw_rows, level) if raw_rows.size else b""
    return b"".join([_HEAD.pack(MAGIC, R, B, len(header), G), header, *streams, raw_b])


def _bad(what: str) -> ValueError:
    return ValueError(f"bitrows chunk: {what}")


def _nth_set_bit(stream: np.ndarray, cum: np.ndarray, t: int) -> int:
    """Bit index of the t-th (0-based) set bit of a byte stream; cum = cumsum of its popcounts."""
    byte = int(np.searchsorted(cum, t + 1))
    before = int(cum[byte - 1]) if byte else 0
    return 8 * byte + int(set_bit_positions(stream[byte:byte + 1])[t - before])


def _decode_group(unary: np.ndarray, rem: np.ndarray, n: np.ndarray, kr: np.ndarray, n_bits: int,
                  inv: np.ndarray, j0: int = 0, j1: int | None = None) -> np.ndarray:
    """One group's streams -> uint8 [j1 - j0, n_bits / 8]: the group's coded rows j0..j1, ZEROS
    rows (inv, one flag per row asked for) inverted back. Only those rows' codes are decoded."""
    j1 = n.size if j1 is None else j1
    bit_start = _rem_starts(kr, n)
    if int((n * kr).sum()) > 8 * rem.size:
        raise _bad(f"expected {int((n * kr).sum())} remainder bits, got {8 * rem.size}")
    starts = np.cumsum(n) - n
    t0, t1 = int(starts[j0]), int(starts[j1 - 1] + n[j1 - 1])        # codes of rows j0..j1
    if j0 == 0 and j1 == n.size:
        ends, prev = set_bit_positions(unary), -1
    else:  # the unary slice of those rows only: found by popcounts, decoded alone
        cum = np.cumsum(np.bitwise_count(unary), dtype=np.int64)
        if cum.size == 0 or int(cum[-1]) < t1:
            raise _bad(f"expected {t1} Rice codes, got {int(cum[-1]) if cum.size else 0}")
        prev = _nth_set_bit(unary, cum, t0 - 1) if t0 else -1
        last = _nth_set_bit(unary, cum, t1 - 1) if t1 > t0 else prev
        lo = max(prev, 0) // 8
        ends = set_bit_positions(unary[lo:last // 8 + 1]) + 8 * lo
        ends = ends[(ends > prev) & (ends <= last)]
    n, kr, bit_start, starts = n[j0:j1], kr[j0:j1], bit_start[j0:j1], starts[j0:j1] - t0
    total = int(n.sum())
    if ends.size != total:
        raise _bad(f"expected {total} Rice codes, got {ends.size}")
    kf = np.repeat(kr, n)
    gaps = (np.diff(ends, prepend=prev) - 1) << kf
    off = np.repeat(bit_start - starts * kr, n) + np.arange(total) * kf
    gaps += _read_fields(rem, off, kf)
    c = np.cumsum(gaps + 1)
    base = np.where(starts > 0, c[np.maximum(starts - 1, 0)], 0)
    pos = c - np.repeat(base, n) - 1                                      # bit index within its row
    if pos.size and pos.max() >= n_bits:
        raise _bad("a Rice-coded bit falls outside its row")
    bitmap = np.zeros((n.size, n_bits), dtype=bool)
    pos += np.repeat(np.arange(n.size) * n_bits, n)                       # bit index in the bitmap
    bitmap.reshape(-1)[pos] = True
    out = np.packbits(bitmap, axis=1, bitorder="little")
    out[inv] = ~out[inv]
    return out


def decode(data: bytes | memoryview | np.ndarray, rows: tuple[int, int] | None = None) -> np.ndarray:
    """The chunk layout above -> uint8 [R, B], or only rows r0..r1 of it (rows=(r0, r1)), which
    decodes only those rows' Rice codes. Raises ValueError on a malformed chunk."""
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size < _HEAD.size:
        raise _bad(f"expected at least {_HEAD.size} bytes, got {buf.size}")
    magic, R, B, hn, G = _HEAD.unpack_from(buf)
    if magic != MAGIC:
        raise _bad(f"expected magic {MAGIC!r}, got {bytes(magic)!r}")
    o = _HEAD.size
    try:
        header = np.frombuffer(_zstd.decompress(buf[o:o + hn]), dtype=np.uint8)
    except RuntimeError as e:
        raise _bad(f"header: {e}") from None
    if header.size != 6 * R + 12 * G:
        raise _bad(f"expected a header of {6 * R + 12 * G} bytes, got {header.size}")
    jit = _jit()
    if jit is not None:
        return _decode_jit(jit, buf, o + hn, R, B, G, header, rows)
    mode, k = header[:R], header[R:2 * R].astype(np.int64)
    coded = header[2 * R:6 * R].view("<u4").astype(np.int64)
    end_row, ub, rb = (header[6 * R + 4 * G * i:6 * R + 4 * G * (i + 1)].view("<u4").astype(np.int64) for i in range(3))
    if (mode > RAW).any() or (k > 30).any():
        raise _bad(f"expected modes <= {RAW} and k <= 30, got {int(mode.max())} and {int(k.max())}")
    if G and ((np.diff(end_row) <= 0).any() or end_row[-1] > R or end_row[0] < 1):
        raise _bad(f"expected group rows ascending within 1..{R}, got {end_row.tolist()}")
    o += hn
    raw_at = o + int(ub.sum() + rb.sum())
    if raw_at > buf.size:
        raise _bad(f"expected at least {raw_at} bytes, got {buf.size}")
    n_bits = B * 8
    r0, r1 = (0, R) if rows is None else rows
    if not 0 <= r0 <= r1 <= R:
        raise ValueError(f"bitrows chunk: rows: expected 0 <= r0 <= r1 <= {R}, got {r0}..{r1}")
    out = np.zeros((r1 - r0, B), dtype=np.uint8)

    raw = mode == RAW
    if raw[r0:r1].any() or (rows is None and raw.any()):   # a row range leaves other rows' bytes alone
        _raw_rows(buf[raw_at:], raw, B, r0, r1, out)

    coded_rows = ((mode == ONES) | (mode == ZEROS)) & (coded > 0)
    if coded_rows[end_row[-1] if G else 0:].any():
        raise _bad("a Rice-coded row lies outside every group")
    first = 0
    for g in range(G):
        unary, o = buf[o:o + ub[g]], o + ub[g]
        rem, o = buf[o:o + rb[g]], o + rb[g]
        grp = first + np.flatnonzero(coded_rows[first:end_row[g]])         # the group's coded rows
        first = int(end_row[g])
        j0, j1 = np.searchsorted(grp, r0), np.searchsorted(grp, r1)        # those asked for
        if j1 > j0:
            sel = grp[j0:j1]
            out[sel - r0] = _decode_group(unary, rem, coded[grp], k[grp], n_bits, mode[sel] == ZEROS,
                                          int(j0), int(j1))
    ones = (mode[r0:r1] == ZEROS) & (coded[r0:r1] == 0)
    out[ones] = 0xFF                                                     # rows that always fire
    return out


def _decode_jit(jit, buf: np.ndarray, o: int, R: int, B: int, G: int, header: np.ndarray,
                rows: tuple[int, int] | None) -> np.ndarray:
    """decode() by the compiled kernels: the same checks and messages, header fields unconverted."""
    r0, r1 = (0, R) if rows is None else rows
    if not 0 <= r0 <= r1 <= R:
        raise ValueError(f"bitrows chunk: rows: expected 0 <= r0 <= r1 <= {R}, got {r0}..{r1}")
    mode, k = header[:R], header[R:2 * R]
    coded = header[2 * R:6 * R].view("<u4")
    end_row, ub, rb = (header[6 * R + 4 * G * i:6 * R + 4 * G * (i + 1)].view("<u4") for i in range(3))
    out = np.zeros((r1 - r0, B), dtype=np.uint8)
    err, g, need = jit.decode_chunk(buf, o, R, B, mode, k, coded, end_row, ub, rb, r0, r1, out)
    if err != jit.OK:
        raise _bad({jit.BAD_MODE: f"expected modes <= {RAW} and k <= 30, got {int(mode.max())} and {int(k.max())}",
                    jit.BAD_GROUPS: f"expected group rows ascending within 1..{R}, got {end_row.tolist()}",
                    jit.OUTSIDE_GROUPS: "a Rice-coded row lies outside every group",
                    jit.TRUNCATED: f"expected at least {need} bytes, got {buf.size}",
                    jit.UNARY_SHORT: f"group {g}: its unary stream ends before its last Rice code",
                    jit.OUTSIDE_ROW: f"group {g}: a Rice-coded bit falls outside its row",
                    jit.REM_SHORT: f"group {g}: its remainder stream is shorter than its codes",
                    jit.CODES_EXTRA: f"group {g}: its unary stream lists more Rice codes than its rows"}[err])
    raw = mode == RAW
    if raw[r0:r1].any() or (rows is None and raw.any()):   # a row range leaves other rows' bytes alone
        _raw_rows(buf[need:], raw, B, r0, r1, out)
    return out


def _raw_rows(data: np.ndarray, raw: np.ndarray, B: int, r0: int, r1: int, out: np.ndarray) -> None:
    """The RAW rows among r0..r1 from the chunk's zstd tail into out[row - r0]."""
    try:
        raw_b = np.frombuffer(_zstd.decompress(data), dtype=np.uint8)
    except RuntimeError as e:
        raise _bad(f"raw rows: {e}") from None
    if raw_b.size != int(raw.sum()) * B:
        raise _bad(f"expected {int(raw.sum()) * B} raw bytes, got {raw_b.size}")
    first_raw = int(raw[:r0].sum())
    out[raw[r0:r1]] = raw_b.reshape(-1, B)[first_raw:first_raw + int(raw[r0:r1].sum())]
