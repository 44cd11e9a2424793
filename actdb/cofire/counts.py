"""Co-firing: which neurons fire together (docs/definitions.md, "Co-firing").

For neurons A and B over N token rows (all of the store's, or a subset: a domain, a position
range): n_a, n_b their fires, n_both the rows where both fire, all exact integers (popcount of the
AND of their bit rows). Jaccard = n_both / (n_a + n_b - n_both); P(B | A) = n_both / n_a;
phi = (N n_both - n_a n_b) / sqrt(n_a n_b (N - n_a) (N - n_b)), NULL (nan here) when a factor is 0.
A neuron's neighbours are the other neurons ranked by one measure (phi by default), larger first,
of equal values the lower (layer, neuron) first; pairs whose measure is NULL are not ranked.

Uses of one counting engine:
- neighbours(): one neuron against every neuron of the chosen layers, any measure and token
  subset (the SQL table function `neighbours(...)`, `actdb.open(p).neighbours(...)`). The
  mask words it reads stay in a per-handle cache of at most CACHE_MB.
- build_neighbours(): every alive neuron's top-k by phi within its layer and across all layers,
  the index table neuron_neighbours.parquet (`actdb index --neighbours K`). Exact: every pair's
  n_both is counted, so no recall question arises. Memory is flat in tokens: the masks are
  decoded once into a file of 64-bit words (index/_tmp/), token block by token block, and each
  tile of neuron pairs streams those blocks, accumulating its counts; a tile's side follows
  `memory_mb`. Counted by the compiled kernels on CPU (cofire/kernels.py), by a float32
  matmul of unpacked bit blocks on a torch device (exact: 0/1 products, sums below 2**24 per
  block, accumulated in int64).
- match_stores(): each neuron of one store against every neuron of another over the same token
  rows (two fire rules of one store, or two models with one tokenizer), its best match by phi.
- counts_among(): every pair among a few neurons of one layer (a layer's positional neurons as
  a team, actdb.explore.positional), from their chunks only.
"""
from __future__ import annotations

import dataclasses
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import InputError
from ..jit import compiled as _compiled

MEASURES = ("phi", "jaccard", "p")
SCOPES = ("layer", "all")   # the index table's two lists: the neuron's own layer, every recorded layer
CACHE_MB = 1024             # mask words a handle (of one rule) keeps for neighbours(); the demo's SmolLM2: 270 MiB
_TORCH_TOKENS = 16384       # tokens unpacked to float32 at once on a torch device: far below float32's exact 2**24


def kernels():
    """The compiled co-firing kernels, or None (ACTDB_INDEX_JIT=0, no numba): numpy then counts."""
    return _compiled("actdb.cofire.kernels", "ACTDB_INDEX_JIT")


# ---------------------------------------------------------------- measures

def measures(n: int, n_a: Any, n_b: Any, n_both: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(jaccard, P(B | A), phi) as float64 arrays, nan where NULL, from exact counts (broadcast).
    phi's operations and their order are those of kernels.phi_of: the same doubles."""
    a, b, c = (np.asarray(x, dtype=np.int64) for x in (n_a, n_b, n_both))
    with np.errstate(divide="ignore", invalid="ignore"):
        union = a + b - c
        jaccard = np.where(union > 0, c / np.where(union > 0, union, 1), np.nan)
        p = np.where(a > 0, c / np.where(a > 0, a, 1), np.nan)
        den = np.sqrt(a.astype(np.float64) * b.astype(np.float64) * (n - a).astype(np.float64)
                      * (n - b).astype(np.float64))
        phi = np.where(den > 0, (n * c - a * b).astype(np.float64) / np.where(den > 0, den, 1.0), np.nan)
    return jaccard, p, phi


def _null(x: float) -> float | None:
    return None if x != x else float(x)


@dataclass(frozen=True)
class Pair:
    """Neurons A (layer, neuron) and B (other_layer, other_neuron): exact counts over n_tokens rows and
    the measures (None where NULL)."""
    layer: int
    neuron: int
    other_layer: int
    other_neuron: int
    n_a: int
    n_b: int
    n_both: int
    n_tokens: int
    jaccard: float | None
    p_other_given: float | None
    phi: float | None


@dataclass(frozen=True)
class Neighbour(Pair):
    """One neighbour B of neuron A; rank 1 is the best by the measure asked for."""
    rank: int


@dataclass(frozen=True)
class Match(Pair):
    """A neuron of store A and its best match B by phi in store B, over the same token rows."""


@dataclass(frozen=True)
class TokenSubset:
    """The token rows co-firing is counted on: a domain and/or positions pos_min..pos_max
    (inclusive); all rows when every field is None."""
    domain: str | None = None
    pos_min: int | None = None
    pos_max: int | None = None

    def __post_init__(self) -> None:
        for name in ("pos_min", "pos_max"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0):
                raise InputError(f"{name}: expected a position >= 0, got {v!r}")
        if self.pos_min is not None and self.pos_max is not None and self.pos_min > self.pos_max:
            raise InputError(f"pos_min..pos_max: expected pos_min <= pos_max, got {self.pos_min}..{self.pos_max}")

    @property
    def everything(self) -> bool:
        return self.domain is None and self.pos_min is None and self.pos_max is None


def subset_rows(st, subset: TokenSubset) -> np.ndarray:
    """bool [n_tokens]: the rows of `subset`, from the token table (a checked read)."""
    import polars as pl

    t = st.tokens().select("pos", pl.col("domain").cast(pl.Utf8))
    keep = np.ones(st.n_tokens, dtype=bool)
    if subset.domain is not None:
        domains = t["domain"]
        if subset.domain not in set(domains.unique().to_list()):
            raise InputError(f"domain: expected one of {sorted(domains.unique().drop_nulls().to_list())}, "
                             f"got {subset.domain!r}")
        keep &= (domains == subset.domain).to_numpy()
    pos = t["pos"].to_numpy()
    if subset.pos_min is not None:
        keep &= pos >= subset.pos_min
    if subset.pos_max is not None:
        keep &= pos <= subset.pos_max
    return keep


# ---------------------------------------------------------------- bits

def _words(packed: np.ndarray, n_rows: int) -> np.ndarray:
    """uint8 [d, bytes] packed rows (bit r % 8 of byte r // 8) -> uint64 [d, ceil(n_rows / 64)], bits
    at n_rows and past them cleared."""
    d = packed.shape[0]
    w = -(-n_rows // 64)
    buf = np.zeros((d, w * 8), dtype=np.uint8)
    nb = min(packed.shape[1], -(-n_rows // 8))
    buf[:, :nb] = packed[:, :nb]
    if n_rows % 8:
        buf[:, n_rows // 8] &= np.uint8((1 << (n_rows % 8)) - 1)
    return buf.view("<u8")


def _row_words(rows: np.ndarray) -> np.ndarray:
    """bool [n] -> uint64 [1, ceil(n / 64)]."""
    return _words(np.packbits(rows, bitorder="little")[None, :], len(rows))


def _blocks(n: int, block: int) -> list[tuple[int, int]]:
    """Token blocks (s0, s1): `block` rows each (a multiple of 8: byte-aligned), the last shorter."""
    return [(s0, min(n, s0 + block)) for s0 in range(0, n, block)]


def _block_of(st) -> int:
    """Rows per token block: the store's chunk width, so each chunk is decoded once."""
    b = int(st.manifest.block_tokens)
    return b - b % 8 or 8


def _block_words(st, layer: int, s0: int, s1: int) -> np.ndarray:
    """uint64 [d_ffn, ceil((s1 - s0) / 64)]: a layer's mask rows s0..s1 (s0 a multiple of 8), a checked read."""
    return _words(st.packed(layer)[:, s0 // 8:-(-s1 // 8)], s1 - s0)


def _popcounts(words: np.ndarray) -> np.ndarray:
    jit = kernels()
    out = np.zeros(words.shape[0], np.int64)
    if jit is not None:
        jit.row_popcounts(words, out)
    else:
        out += np.bitwise_count(words).sum(axis=1, dtype=np.int64)
    return out


def _row_counts(a: np.ndarray, words: np.ndarray) -> np.ndarray:
    """int64 [rows]: popcount(a & row) of one word row a [W] against each row of words [rows, W]."""
    jit = kernels()
    if jit is not None:
        out = np.zeros(words.shape[0], np.int64)
        jit.row_counts(np.ascontiguousarray(a), words, out)
        return out
    return np.bitwise_count(words & a[None, :]).sum(axis=1, dtype=np.int64)


class _BlockCache:
    """A handle's mask words by (layer, token block), least recently used dropped past CACHE_MB;
    shared by the handle's thread handles (the explorer's), hence the lock."""

    def __init__(self, budget: int) -> None:
        self.budget, self.used = budget, 0
        self.items: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.subsets: OrderedDict[TokenSubset, np.ndarray] = OrderedDict()   # bool rows of the last few subsets
        self.lock = threading.Lock()

    def get(self, st, layer: int, s0: int, s1: int) -> tuple[np.ndarray, np.ndarray]:
        """(words [d, W], fires [d]) of layer's rows s0..s1."""
        key = (layer, s0, s1)
        with self.lock:
            hit = self.items.get(key)
            if hit is not None:
                self.items.move_to_end(key)
                return hit
        words = _block_words(st, layer, s0, s1)
        entry = (words, _popcounts(words))
        size = words.nbytes
        with self.lock:
            if size <= self.budget:
                while self.used + size > self.budget and self.items:
                    _, (w, _) = self.items.popitem(last=False)
                    self.used -= w.nbytes
                if key not in self.items:
                    self.items[key] = entry
                    self.used += size
        return entry


_CACHE_LOCK = threading.Lock()


def _cache(st) -> _BlockCache:
    """The cache of handle `st`, kept by the handle its thread handles were made from (the explorer's
    threads share one)."""
    owner = st.__dict__.get("_parent") or st
    with _CACHE_LOCK:
        c = owner.__dict__.get("_cofire_cache")
        if c is None:
            c = owner.__dict__["_cofire_cache"] = _BlockCache(CACHE_MB << 20)
    return c


def _subset_cache(st, subset: TokenSubset) -> np.ndarray:
    """A handle's bool rows of a subset (the last few kept)."""
    cache = _cache(st)
    with cache.lock:
        rows = cache.subsets.get(subset)
    if rows is None:
        rows = subset_rows(st, subset)
        with cache.lock:
            cache.subsets[subset] = rows
            while len(cache.subsets) > 4:
                cache.subsets.popitem(last=False)
    return rows


def _layers(st, layers: Iterable[int] | None, what: str = "layers") -> tuple[int, ...]:
    recorded = tuple(st.manifest.layers)
    if layers is None:
        return recorded
    chosen = tuple(sorted({int(l) for l in layers}))
    bad = [l for l in chosen if l not in recorded]
    if bad or not chosen:
        raise InputError(f"{what}: expected recorded layers {list(recorded)}, got {bad or list(chosen)}")
    return chosen


# ---------------------------------------------------------------- one neuron against all

def neighbours(st, layer: int, neuron: int, k: int = 20, by: str = "phi", layers: Iterable[int] | None = None,
               rule: str | None = None, subset: TokenSubset | None = None) -> list[Neighbour]:
    """Neuron (layer, neuron) against every other neuron of `layers` (default: every recorded
    layer) over the rows of `subset` (default: all) under fire rule `rule` (default: the handle's):
    the top k by `by` (phi, jaccard or p = P(B | A)), exact counts and every measure."""
    st = st.with_rule(rule)
    m = st.manifest
    if layer not in m.layers:
        raise InputError(f"layer: expected one of the recorded layers {list(m.layers)}, got {layer}")
    if not 0 <= neuron < m.d_ffn:
        raise InputError(f"neuron: expected 0..{m.d_ffn - 1}, got {neuron}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k: expected a number of neighbours >= 1, got {k!r}")
    if by not in MEASURES:
        raise InputError(f"by: expected one of {', '.join(MEASURES)}, got {by!r}")
    chosen = _layers(st, layers)
    subset = subset or TokenSubset()
    rows = None if subset.everything else _subset_cache(st, subset)
    n = st.n_tokens if rows is None else int(rows.sum())
    cache = _cache(st)
    others = {l: (np.zeros(m.d_ffn, np.int64), np.zeros(m.d_ffn, np.int64)) for l in chosen}   # n_b, n_both
    n_a = 0
    for s0, s1 in _blocks(st.n_tokens, _block_of(st)):
        words, _ = cache.get(st, layer, s0, s1)
        a = words[neuron]
        if rows is not None:
            sub = _row_words(rows[s0:s1])[0]
            a = a & sub
        n_a += int(_popcounts(a[None, :])[0])
        for l in chosen:
            w, fires = cache.get(st, l, s0, s1)
            nb, nab = others[l]
            nb += fires if rows is None else _row_counts(sub, w)
            nab += _row_counts(a, w)
    lay = np.concatenate([np.full(m.d_ffn, l, np.int64) for l in chosen])
    neu = np.tile(np.arange(m.d_ffn, dtype=np.int64), len(chosen))
    n_b = np.concatenate([others[l][0] for l in chosen])
    n_both = np.concatenate([others[l][1] for l in chosen])
    jac, p, phi = measures(n, n_a, n_b, n_both)
    score = {"phi": phi, "jaccard": jac, "p": p}[by]
    ok = ~np.isnan(score) & ~((lay == layer) & (neu == neuron))
    idx = np.flatnonzero(ok)
    # larger first, then the lower (layer, neuron): ids are in that order already
    order = idx[np.lexsort((idx, -score[idx]))][:k]
    return [Neighbour(layer, neuron, int(lay[i]), int(neu[i]), n_a, int(n_b[i]), int(n_both[i]), n,
                      _null(jac[i]), _null(p[i]), _null(phi[i]), r) for r, i in enumerate(order, 1)]


def counts_among(st, layer: int, neurons: Sequence[int], rule: str | None = None) -> tuple[int, np.ndarray, np.ndarray]:
    """Exact co-firing counts among a few neurons of one layer over every row: (n_tokens, fires [k],
    n_both [k, k]), in the order of `neurons` (the diagonal holds each one's fires). It reads the
    neurons' chunks block by block (checked reads), keeping none of them."""
    st = st.with_rule(rule)
    m = st.manifest
    if layer not in m.layers:
        raise InputError(f"layer: expected one of the recorded layers {list(m.layers)}, got {layer}")
    idx = np.asarray(list(neurons), dtype=np.int64)
    if len(idx) and (idx.min() < 0 or idx.max() >= m.d_ffn):
        raise InputError(f"neurons: expected 0..{m.d_ffn - 1}, got {idx[(idx < 0) | (idx >= m.d_ffn)][0]}")
    both = np.zeros((len(idx), len(idx)), np.int64)
    if not len(idx):
        return st.n_tokens, np.zeros(0, np.int64), both
    jit, packed, nc = kernels(), st.packed(layer), max(1, int(m.neuron_chunk))
    chunks = np.unique(idx // nc)
    for s0, s1 in _blocks(st.n_tokens, _block_of(st)):
        # only the neuron chunks that hold the neurons: a few neurons' masks, not the layer's, so
        # memory does not grow with the store (the team figure of a 20M-token store)
        parts = {int(c): _words(packed[c * nc:(c + 1) * nc, s0 // 8:-(-s1 // 8)], s1 - s0) for c in chunks}
        w = np.ascontiguousarray(np.stack([parts[int(i) // nc][int(i) % nc] for i in idx]))
        if jit is not None:
            jit.pair_counts(w, w, both)
        else:
            for i in range(len(idx)):
                both[i] += _row_counts(w[i], w)
    return st.n_tokens, np.diag(both).copy(), both


# ---------------------------------------------------------------- every pair: the engine

@dataclass(frozen=True)
class _Segment:
    """Rows id0 .. id0 + d_ffn - 1 of the engine: one recorded layer of a store under its handle's rule."""
    store: Any
    layer: int
    id0: int


def _segments(parts: Sequence[tuple[Any, Sequence[int]]]) -> list[_Segment]:
    out, at = [], 0
    for st, layers in parts:
        for l in layers:
            out.append(_Segment(st, int(l), at))
            at += st.manifest.d_ffn
    return out


class _Spill:
    """Every engine row's mask words, token block by token block, in one file: block b holds the
    rows 0..D-1, W_b words each. Written once (the only decoding of the masks); each tile reads
    its rows back with pread, so memory does not follow the tokens."""

    def __init__(self, path: Path, segments: list[_Segment], n: int, block: int) -> None:
        self.path, self.n = Path(path), n
        self.blocks = _blocks(n, block)
        self.D = sum(s.store.manifest.d_ffn for s in segments)
        self.widths = [-(-(s1 - s0) // 64) for s0, s1 in self.blocks]
        self.offsets = np.r_[0, np.cumsum([self.D * w * 8 for w in self.widths])].astype(np.int64)
        self.fires = np.zeros(self.D, np.int64)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for seg in segments:
                d = seg.store.manifest.d_ffn
                for b, (s0, s1) in enumerate(self.blocks):
                    w = _block_words(seg.store, seg.layer, s0, s1)
                    self.fires[seg.id0:seg.id0 + d] += _popcounts(w)
                    _pwrite_all(fd, w, int(self.offsets[b]) + seg.id0 * self.widths[b] * 8)
        except BaseException:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise
        self.fd = fd

    def read(self, b: int, r0: int, r1: int) -> np.ndarray:
        """uint64 [r1 - r0, W_b]: rows r0..r1 of token block b."""
        out = np.empty((r1 - r0, self.widths[b]), np.uint64)
        view = memoryview(out).cast("B")
        off, done = int(self.offsets[b]) + r0 * self.widths[b] * 8, 0
        while done < len(view):
            got = os.preadv(self.fd, [view[done:]], off + done)
            if got <= 0:
                raise OSError(f"{self.path}: short read")
            done += got
        return out

    def close(self) -> None:
        os.close(self.fd)
        self.path.unlink(missing_ok=True)


def _pwrite_all(fd: int, arr: np.ndarray, offset: int) -> None:
    view = memoryview(np.ascontiguousarray(arr)).cast("B")
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


class _Counter:
    """Adds the n_both of two blocks of word rows into a tile's counts: compiled kernels (CPU),
    numpy (ACTDB_INDEX_JIT=0), or a float32 matmul of the unpacked bits on a torch device."""

    def __init__(self, device: str, workers: int, torch_cpu: bool = False) -> None:
        self.device, self.workers = device, max(1, workers)
        self.torch = device != "cpu" or torch_cpu
        self.jit = None if self.torch else kernels()
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="actdb-cofire") if self.workers > 1 else None

    def zeros(self, r: int, c: int):
        if self.torch:
            import torch

            return torch.zeros((r, c), dtype=torch.int64, device=self.device)
        return np.zeros((r, c), np.int64)

    def result(self, counts) -> np.ndarray:
        return counts.cpu().numpy() if self.torch else counts

    def split(self, fn, n: int) -> None:
        """fn(r0, r1) over row slices of 0..n, in the workers' threads (the kernels release the GIL)."""
        step = -(-n // self.workers)
        cuts = [(r0, min(n, r0 + step)) for r0 in range(0, n, step)]
        if self.pool is None or len(cuts) < 2:
            for c in cuts:
                fn(*c)
            return
        for f in [self.pool.submit(fn, *c) for c in cuts]:
            f.result()

    def add(self, a: np.ndarray, b: np.ndarray, counts) -> None:
        if self.torch:
            return self._add_torch(a, b, counts)
        if self.jit is not None:
            return self._add_compiled(a, b, counts)

        def rows(r0: int, r1: int) -> None:
            for i in range(r0, r1):
                counts[i] += np.bitwise_count(b & a[i][None, :]).sum(axis=1, dtype=np.int64)
        self.split(rows, a.shape[0])

    def _add_compiled(self, a: np.ndarray, b: np.ndarray, counts: np.ndarray) -> None:
        """Each row of a by whichever kernel costs it less, in units of one word pair of pair_counts
        (0.1 ns here): pair_counts, b's rows x words; sparse_counts, per fire of the row ~200 plus ~35
        per fire of b on that token (3.1-3.6 ns an increment, measured on the demo's SmolLM2 and the
        OPT-shaped synthetic store: benchmarks/RESULTS.md, "Co-firing"). The lists of b's fires are made
        only when b fires on at most 1/16 of its bits: their int32s then take at most twice the memory
        of b's words."""
        jit = self.jit
        nb, W = b.shape
        fb = _popcounts(b)
        sparse = np.zeros(0, np.int64)
        if fb.sum() * 16 <= b.size * 64:
            per_token = fb.sum() / (W * 64)
            sparse = np.flatnonzero(_popcounts(a) * (35 * per_token + 200) < nb * W)
        if len(sparse):
            starts, cols = jit.token_lists(b, W * 64)
            self.split(lambda r0, r1: jit.sparse_counts(a, sparse[r0:r1], starts, cols, counts), len(sparse))
        if len(sparse) == a.shape[0]:
            return
        if not len(sparse):
            self.split(lambda r0, r1: jit.pair_counts(a[r0:r1], b, counts[r0:r1]), a.shape[0])
            return
        dense = np.setdiff1d(np.arange(a.shape[0]), sparse)
        ad, part = a[dense], np.zeros((len(dense), nb), np.int64)
        self.split(lambda r0, r1: jit.pair_counts(ad[r0:r1], b, part[r0:r1]), len(dense))
        counts[dense] += part

    def _add_torch(self, a: np.ndarray, b: np.ndarray, counts) -> None:
        import torch

        shifts = torch.arange(8, device=self.device, dtype=torch.uint8)

        def unpack(x: np.ndarray, w0: int, w1: int):
            t = torch.from_numpy(np.ascontiguousarray(x[:, w0:w1]).view(np.uint8)).to(self.device)
            return ((t.unsqueeze(-1) >> shifts) & 1).reshape(x.shape[0], -1).to(torch.float32)

        step = _TORCH_TOKENS // 64   # words per matmul
        for w0 in range(0, a.shape[1], step):
            w1 = min(a.shape[1], w0 + step)
            fa = unpack(a, w0, w1)
            fb = fa if b is a else unpack(b, w0, w1)
            counts += torch.mm(fa, fb.T).round_().to(torch.int64)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def _tile_side(memory_mb: float, block_words: int, n_rows: int) -> int:
    """Rows per tile side: int64 counts R x R and two blocks of R rows fit half of memory_mb (the
    rest: the top lists, the spill's page cache is the OS's)."""
    budget = memory_mb * 2**20 / 2
    r = 64
    while r < n_rows and 8 * (2 * r) ** 2 + 16 * (2 * r) * block_words <= budget:
        r *= 2
    return max(64, min(r, n_rows))


class _Tops:
    """Running top-k lists by phi of every engine row: `all` columns, and `own` (the row's layer)."""

    def __init__(self, rows: int, k: int) -> None:
        self.k = k
        self.val = {s: np.full((rows, k), -np.inf) for s in SCOPES}
        self.id = {s: np.full((rows, k), -1, np.int64) for s in SCOPES}
        self.cnt = {s: np.zeros((rows, k), np.int64) for s in SCOPES}

    def merge(self, counter: _Counter, counts: np.ndarray, transpose: bool, n: int, rows: tuple, cols: tuple) -> None:
        """rows/cols: (fires, ids, layers) of the tile's rows and columns."""
        jit = kernels()
        nr = len(rows[0])
        if jit is not None:
            def part(r0: int, r1: int) -> None:
                jit.merge_topk(counts, transpose, r0, r1, n, *rows, *cols, self.val["all"], self.id["all"],
                               self.cnt["all"], self.val["layer"], self.id["layer"], self.cnt["layer"])
            counter.split(part, nr)
            return
        c = counts.T if transpose else counts
        fa, ia, la = rows
        fb, ib, lb = cols
        _, _, phi = measures(n, fa[:, None], fb[None, :], c)
        phi[ia[:, None] == ib[None, :]] = np.nan
        for scope in SCOPES:
            v = phi if scope == "all" else np.where(la[:, None] == lb[None, :], phi, np.nan)
            self._merge_numpy(scope, ia, v, np.broadcast_to(ib, v.shape), c)

    def _merge_numpy(self, scope: str, ids: np.ndarray, v: np.ndarray, cid: np.ndarray, c: np.ndarray) -> None:
        k = self.k
        vals = np.concatenate([self.val[scope][ids], np.where(np.isnan(v), -np.inf, v)], axis=1)
        idx = np.concatenate([self.id[scope][ids], np.where(np.isnan(v), -1, cid)], axis=1)
        cnt = np.concatenate([self.cnt[scope][ids], c], axis=1)
        # larger first, then the lower id; the empty slots (-inf, id -1) last
        empty = idx < 0
        order = np.lexsort((np.where(empty, np.iinfo(np.int64).max, idx), -vals), axis=1)[:, :k]
        take = np.take_along_axis
        self.val[scope][ids], self.id[scope][ids] = take(vals, order, 1), take(idx, order, 1)
        self.cnt[scope][ids] = take(cnt, order, 1)
        self.id[scope][ids] = np.where(take(empty, order, 1), -1, self.id[scope][ids])


def _run(spill: _Spill, tops: _Tops, rows: tuple[int, int], cols: tuple[int, int], symmetric: bool,
         counter: _Counter, side: int, ids: np.ndarray, layers: np.ndarray, progress: bool = False) -> None:
    """Count every tile of engine rows rows[0]..rows[1] against columns cols[0]..cols[1] over every
    token block and merge it into `tops` (symmetric: rows and columns are the same set, each pair
    counted once and merged both ways)."""
    from tqdm import tqdm

    f = spill.fires
    tiles = [(i0, min(rows[1], i0 + side), j0, min(cols[1], j0 + side)) for i0 in range(rows[0], rows[1], side)
             for j0 in range(i0 if symmetric else cols[0], cols[1], side)]
    for i0, i1, j0, j1 in tqdm(tiles, unit="tile", desc="co-firing", disable=not progress, dynamic_ncols=True):
        counts = counter.zeros(i1 - i0, j1 - j0)
        for b in range(len(spill.blocks)):
            a = spill.read(b, i0, i1)
            counter.add(a, a if (i0, i1) == (j0, j1) else spill.read(b, j0, j1), counts)
        counts = counter.result(counts)
        ri, ci = slice(i0, i1), slice(j0, j1)
        tops.merge(counter, counts, False, spill.n, (f[ri], ids[ri], layers[ri]), (f[ci], ids[ci], layers[ci]))
        if symmetric and j0 != i0:
            tops.merge(counter, counts, True, spill.n, (f[ci], ids[ci], layers[ci]), (f[ri], ids[ri], layers[ri]))


def _engine_layers(segments: list[_Segment]) -> np.ndarray:
    return np.concatenate([np.full(s.store.manifest.d_ffn, s.layer, np.int64) for s in segments])


def _memory_side(spill: _Spill, memory_mb: float) -> int:
    return _tile_side(memory_mb, max(spill.widths, default=1), spill.D)


def _neighbour_table(spill: _Spill, tops: _Tops, segments: list[_Segment]):
    """The table neuron_neighbours: one row per alive neuron, scope and rank."""
    import pyarrow as pa

    lay, neu = _engine_layers(segments), np.concatenate([np.arange(s.store.manifest.d_ffn) for s in segments])
    cols: dict[str, list[np.ndarray]] = {c: [] for c in ("layer", "neuron", "scope", "rank", "other", "n_both")}
    for code, scope in enumerate(SCOPES):
        ids, cnt = tops.id[scope], tops.cnt[scope]
        r, j = np.nonzero(ids >= 0)
        cols["layer"].append(r)
        cols["scope"].append(np.full(len(r), code, np.int8))
        cols["rank"].append(j + 1)
        cols["other"].append(ids[r, j])
        cols["n_both"].append(cnt[r, j])
    row = np.concatenate(cols["layer"])
    scope = np.concatenate(cols["scope"])
    rank = np.concatenate(cols["rank"])
    other = np.concatenate(cols["other"])
    n_both = np.concatenate(cols["n_both"])
    order = np.lexsort((rank, scope, row))
    row, scope, rank, other, n_both = row[order], scope[order], rank[order], other[order], n_both[order]
    n_a, n_b = spill.fires[row], spill.fires[other]
    jac, p, phi = measures(spill.n, n_a, n_b, n_both)
    return pa.table({
        "layer": pa.array(lay[row].astype(np.int32)), "neuron": pa.array(neu[row].astype(np.int32)),
        "scope": pa.array(np.array(SCOPES, dtype=object)[scope].tolist(), pa.string()),
        "rank": pa.array(rank.astype(np.int32)),
        "other_layer": pa.array(lay[other].astype(np.int32)), "other_neuron": pa.array(neu[other].astype(np.int32)),
        "n_a": pa.array(n_a), "n_b": pa.array(n_b), "n_both": pa.array(n_both),
        "jaccard": pa.array(jac), "p_other_given": pa.array(p), "phi": pa.array(phi)})


def neighbour_schema():
    """The columns of index/neuron_neighbours.parquet."""
    import pyarrow as pa

    return pa.schema([("layer", pa.int32()), ("neuron", pa.int32()), ("scope", pa.string()), ("rank", pa.int32()),
                      ("other_layer", pa.int32()), ("other_neuron", pa.int32()), ("n_a", pa.int64()),
                      ("n_b", pa.int64()), ("n_both", pa.int64()), ("jaccard", pa.float64()),
                      ("p_other_given", pa.float64()), ("phi", pa.float64())])


def build_neighbours(st, out: Path, k: int, tmp: Path, device: str = "cpu", memory_mb: float = 512.0,
                     workers: int = 1, torch_cpu: bool = False, progress: bool = False,
                     layers: Iterable[int] | None = None) -> Path:
    """Write `out` (index/neuron_neighbours.parquet): every alive neuron's top k by phi within its
    layer (scope 'layer') and over every recorded layer (scope 'all': over `layers` where given),
    exact, under the handle's rule. tmp: a folder for the decoded words (removed after). torch_cpu:
    count with the torch path on the CPU (tests: the device path without a device)."""
    from ..files import write_parquet

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"--neighbours: expected a number of neighbours >= 1, got {k!r}")
    from ..store.layout import COFIRE_SPILL

    segments = _segments([(st, _layers(st, layers))])
    spill = _Spill(Path(tmp) / COFIRE_SPILL, segments, st.n_tokens, _block_of(st))
    counter = _Counter(device, workers, torch_cpu)
    try:
        tops = _Tops(spill.D, k)
        ids = np.arange(spill.D, dtype=np.int64)
        _run(spill, tops, (0, spill.D), (0, spill.D), True, counter, _memory_side(spill, memory_mb), ids,
             _engine_layers(segments), progress=progress)
        table = _neighbour_table(spill, tops, segments).cast(neighbour_schema())
    finally:
        counter.close()
        spill.close()
    write_parquet(table, out)
    return out


# ---------------------------------------------------------------- across stores

def check_same_rows(a, b) -> None:
    """Refuse, in one line, two stores whose token rows differ: co-firing across stores pairs row r
    of one with row r of the other. The recorded digests of the token parts decide when they agree
    (two rules of one store, or byte-identical tables); else the token ids and positions are compared."""
    if a.n_tokens != b.n_tokens:
        raise InputError(f"{b.path}: token rows: expected the {a.n_tokens:,} rows of {a.path}, got {b.n_tokens:,} "
                         "(co-firing across stores needs the same corpus, tokenizer and settings)")
    ra, rb = a.checksum_records(), b.checksum_records()
    if ra is not None and rb is not None:
        def parts(r: dict) -> dict:
            return {k: v.get("sha256") for k, v in r.items() if k.startswith("tokens/")}
        if parts(ra) == parts(rb) and parts(ra):
            return
    ta, tb = a.tokens(), b.tokens()
    for col in ("token_id", "pos"):
        x, y = ta[col].to_numpy(), tb[col].to_numpy()
        bad = np.flatnonzero(x != y)
        if len(bad):
            r = int(bad[0])
            raise InputError(f"{b.path}: token rows: expected the rows of {a.path}, got another {col} at row {r:,} "
                             f"({y[r]} against {x[r]}) (co-firing across stores needs the same corpus, tokenizer "
                             "and settings)")


def match_stores(a, b, same_layer: bool = False, layers_a: Iterable[int] | None = None,
                 layers_b: Iterable[int] | None = None, tmp: Path | None = None, device: str = "cpu",
                 memory_mb: float = 512.0, workers: int = 1, torch_cpu: bool = False) -> list[Match]:
    """Each alive neuron of handle `a` (its rule; layers_a, default all) and its best match by phi
    among the neurons of handle `b` (layers_b; with same_layer only b's layer of the same number).
    The handles are two stores over the same token rows (check_same_rows), or two rules of one."""
    import tempfile

    check_same_rows(a, b)
    la, lb = _layers(a, layers_a, "layers_a"), _layers(b, layers_b, "layers_b")
    if same_layer and not set(la) & set(lb):
        raise InputError(f"--same-layer: expected layers that both stores record, got {list(la)} and {list(lb)}")
    segments = _segments([(a, la), (b, lb)])
    n_rows = sum(a.manifest.d_ffn for _ in la)
    with tempfile.TemporaryDirectory(prefix="actdb-match-", dir=tmp) as d:
        spill = _Spill(Path(d) / "cofire.bits", segments, a.n_tokens, _block_of(a))
        counter = _Counter(device, workers, torch_cpu)
        try:
            tops = _Tops(n_rows, 1)
            # the columns' ids follow the rows' (b's neurons after a's): never the neuron itself
            ids = np.arange(spill.D, dtype=np.int64)
            _run(spill, tops, (0, n_rows), (n_rows, spill.D), False, counter, _memory_side(spill, memory_mb), ids,
                 _engine_layers(segments))
        finally:
            counter.close()
            spill.close()
    scope = "layer" if same_layer else "all"
    lay = _engine_layers(segments)
    neu = np.concatenate([np.arange(s.store.manifest.d_ffn) for s in segments])
    out = []
    for r in np.flatnonzero(tops.id[scope][:, 0] >= 0):
        o, c = int(tops.id[scope][r, 0]), int(tops.cnt[scope][r, 0])
        jac, p, phi = (float(x) for x in measures(spill.n, spill.fires[r], spill.fires[o], c))
        out.append(Match(int(lay[r]), int(neu[r]), int(lay[o]), int(neu[o]), int(spill.fires[r]),
                         int(spill.fires[o]), c, spill.n, _null(jac), _null(p), _null(phi)))
    return out


def as_rows(items: Sequence[Any]) -> list[dict[str, Any]]:
    """Neighbours or matches as dicts (a table's rows: polars.DataFrame(as_rows(...)))."""
    return [dataclasses.asdict(x) for x in items]
