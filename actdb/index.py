"""Out-of-core index: per-neuron aggregate tables in Parquet under STORE/index/.

Built neuron-chunk-major, so the cost follows the number of fires and peak memory follows
`memory_mb`, not the number of tokens or the firing rate:

  1. token arrays, once: per row its domain, position, position if its sequence is full length,
     and the local ids of its unigram / bigram / trigram among the distinct ones (index/_tmp/*.npy,
     memory-mapped; two passes over the token parts, so memory follows the distinct n-grams).
     Each statistic is a column range of one count matrix; rows an n-gram
     statistic excludes (BOS, SPEC §1.3) point at a dump column.
  2. per unit (layer, neuron chunk), resumable (index/_state.json lists the finished units):
     stream that chunk's mask blocks over all tokens, tally exact counts [chunk, columns] with
     np.bincount, and reduce them in memory to the rows the tables keep (index/_parts/UNIT/).
     The chunk is the largest whose counts, tally buffer and bincount result (20 B per cell)
     fit `memory_mb` / workers; units run in worker threads.
  3. concatenate the parts into

    neuron_fires.parquet      layer, neuron, fires                      (every neuron, dead too)
    neuron_domains.parquet    layer, neuron, domain, fires              (fires > 0 only)
    neuron_positions.parquet  layer, neuron, pos, fires, fires_full     (fires > 0 only)
    position_counts.parquet   pos, n, n_full                            (full = sequences of seq_len)
    neuron_tokens.parquet     layer, neuron, token_id, fires, rank, cum, total   (top_k per neuron)
    neuron_bigrams.parquet    layer, neuron, ngram, fires, rank, cum, total      (n-gram layers only)
    neuron_trigrams.parquet   same for trigrams
    token_counts / bigram_counts / trigram_counts .parquet   token_id|ngram, count
    coverage.parquet          layer, neuron, n, n_covering, n_distinct, fires   (exact, p = 0.95)
    token_detectors.parquet / trigram_detectors.parquet   exact, at the paper's thresholds
    positional.parquet        layer, neuron, mi, fr_min, fr_max, switches_exact, switches_weak
    index.json                written last (the index is complete exactly when it exists):
                              config (top_k included) and every file's bytes and sha256

N-gram statistics skip every n-gram that contains position 0 of a sequence when the tokenizer
puts a prefix token (BOS) there (SPEC §1.3). The n-gram tables keep the `top_k` n-grams of each
neuron by fires (descending, then id): `rank` is the 1-based rank, `cum` the running sum of fires
in that order, `total` the neuron's n-gram fires (all of them, not only the top_k).
An n-gram id is the base-V number of its token ids (V = `vocab_base` in index.json):
bigram = a*V + b, trigram = (a*V + b)*V + c.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import InputError, StoreError
from .manifest import atomic_write_text
from .neuron_stats import detectors, segment_stats
from .packing import unpack
from .store import file_digest

INDEX_DIR = "index"
INDEX_FILE = "index.json"
STATE = "_state.json"
INDEX_VERSION = 2
TOP_K = 64          # n-grams kept per neuron in neuron_tokens / bigrams / trigrams
MEMORY_MB = 512     # count matrix + tally buffer + bincount temporary of one unit
ROW_GROUP = 1 << 20  # rows per Parquet row group of the assembled tables
WEAK_EPS = 0.05     # positional patterns: a frequency within this of 0 or 1 counts as (weakly) extreme
P_COV, TOK_MAX_COV, TRI_MAX_COV, P_TOKEN, P_SHARE = 0.95, 5, 50, 0.95, 0.95  # the paper's (SPEC §1.3-1.4)
NGRAMS = (("token", "token_id", 1), ("bigram", "ngram", 2), ("trigram", "ngram", 3))


def default_ngram_layers(manifest) -> tuple[int, ...]:
    """The first half of the network (SPEC: n-gram neurons live in the lower layers)."""
    half = (manifest.n_layers + 1) // 2
    chosen = tuple(l for l in manifest.layers if l < half)
    return chosen or (min(manifest.layers),)


def parse_layers(text: str | None) -> tuple[int, ...] | None:
    """"0,1,2" or "0-5" (or a mix) -> layers; None stays None."""
    if text is None or not text.strip():
        return None
    out: list[int] = []
    try:
        for part in text.split(","):
            a, _, b = part.strip().partition("-")
            out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    except ValueError:
        raise InputError(f"--layers: expected numbers like 0,1,2 or 0-5, got {text!r}") from None
    return tuple(out)


def index_path(store_path: str | Path) -> Path:
    return Path(store_path) / INDEX_DIR


def read_index_info(store_path: str | Path) -> dict[str, Any] | None:
    p = index_path(store_path) / INDEX_FILE
    if not p.exists():
        return None
    return json.loads(p.read_text(encoding="utf-8"))


def _write_parquet(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(path)


# ---------------------------------------------------------------- token arrays (step 1)

class _Tokens:
    """Per-row column ids of the count matrix, memory-mapped from index/_tmp.

    Column layout: domains | positions | full-length positions (+ dump) | tokens (+ dump)
    [| bigrams (+ dump) | trigrams (+ dump) on n-gram layers].

    Built in two passes over the token parts, one part in memory at a time: memory follows
    the number of distinct n-grams (their ids and counts), not the number of tokens."""

    KEYS = ("domain", "pos", "pos_full", "token", "bigram", "trigram")

    def __init__(self, st, m, base: int, tmp: Path) -> None:
        import pyarrow.compute as pc

        self.parts = sorted((st.path / "tokens").glob("part-*.parquet"))
        bb = m.block_tokens
        if len(self.parts) != (m.n_tokens + bb - 1) // bb:
            raise StoreError(f"{st.path / 'tokens'}: expected {(m.n_tokens + bb - 1) // bb} token parts, "
                             f"got {len(self.parts)}")
        T = m.seq_len
        self.T, self.base, self.first = T, base, 1 if m.prefix_tokens else 0
        # pass 1: domains, full-length sequences (SPEC §1.6), distinct n-grams with their counts
        domains: set[str] = set()
        full_seqs = []
        uniq = {name: _DistinctCounter() for name in ("token", "bigram", "trigram")}
        self.n = 0
        for t, pos, grams in self._parts():
            domains.update(pc.unique(t.column("domain").cast(pa.string())).to_pylist())
            full_seqs.append(t.column("seq").to_numpy()[pos == T - 1])
            for name, (key, valid) in grams.items():
                uniq[name].add(key[valid])
            self.n += t.num_rows
        self.domains = sorted(domains)   # sorted: the tables' domain order
        self._full = np.unique(np.concatenate(full_seqs)) if full_seqs else np.zeros(0, np.int64)
        self.uniq, self.counts = {}, {}
        for name, u in uniq.items():
            self.uniq[name], self.counts[name] = u.result()
        nd = len(self.domains)
        self.offsets = {"domain": 0, "pos": nd, "pos_full": nd + T}
        off = nd + T + T + 1
        for name in ("token", "bigram", "trigram"):
            self.offsets[name] = off
            off += len(self.uniq[name]) + 1   # + the dump column of excluded rows
            if name == "token":
                self.width_plain = off
        self.width_ngram = off
        # pass 2: each row's column ids, written straight into the memory-mapped files
        tmp.mkdir(parents=True, exist_ok=True)
        dt = np.int32 if off < 2**31 else np.int64
        out = {k: np.lib.format.open_memmap(tmp / f"col_{k}.npy", mode="w+", dtype=dt, shape=(self.n,))
               for k in self.KEYS}
        self.pos_n = np.zeros(T, np.int64)
        self.pos_full_n = np.zeros(T, np.int64)
        dom_set = pa.array(self.domains, pa.string())
        r0 = 0
        for t, pos, grams in self._parts():
            r1 = r0 + t.num_rows
            full = np.isin(t.column("seq").to_numpy(), self._full)
            self.pos_n += np.bincount(pos, minlength=T)
            self.pos_full_n += np.bincount(pos[full], minlength=T)
            out["domain"][r0:r1] = pc.index_in(t.column("domain").cast(pa.string()), value_set=dom_set).to_numpy()
            out["pos"][r0:r1] = pos + nd
            out["pos_full"][r0:r1] = np.where(full, pos, T) + nd + T
            for name, (key, valid) in grams.items():
                u = self.uniq[name]
                local = np.full(len(key), len(u), np.int64)   # dump column for excluded rows
                local[valid] = np.searchsorted(u, key[valid])
                out[name][r0:r1] = local + self.offsets[name]
            r0 = r1
        for a in out.values():
            a.flush()
        del out
        self.cols = {k: np.load(tmp / f"col_{k}.npy", mmap_mode="r") for k in self.KEYS}

    def _parts(self):
        """(table, pos, {n-gram: (ids, valid)}) per token part, in row order; the previous two tokens
        carry over part boundaries (validity comes from pos, so they never cross a sequence)."""
        prev = np.array([-1, -1], np.int64)
        base, first = self.base, self.first
        for p in self.parts:
            t = pq.read_table(p, columns=["seq", "pos", "token_id", "domain"])
            pos = t.column("pos").to_numpy().astype(np.int64)
            tid = t.column("token_id").to_numpy().astype(np.int64)
            ext = np.r_[prev, tid]
            p1, p2 = ext[1:-1], ext[:-2]
            prev = ext[-2:]
            yield t, pos, {"token": (tid, pos >= first), "bigram": (p1 * base + tid, pos >= first + 1),
                      "trigram": ((p2 * base + p1) * base + tid, pos >= first + 2)}

    def keys(self, ngram: bool) -> tuple[str, ...]:
        return self.KEYS if ngram else self.KEYS[:4]

    def width(self, ngram: bool) -> int:
        return self.width_ngram if ngram else self.width_plain


class _DistinctCounter:
    """Distinct int64 keys with their counts, fed a part at a time: parts are reduced on arrival
    and merged when the pending ones outgrow the merged set, so memory follows the distinct keys."""

    MERGE_AT = 1 << 20   # pending keys that always wait for a merge

    def __init__(self) -> None:
        self.keys, self.counts = np.zeros(0, np.int64), np.zeros(0, np.int64)
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.n_pending = 0

    def add(self, keys: np.ndarray) -> None:
        u, c = np.unique(keys, return_counts=True)
        self.pending.append((u, c.astype(np.int64)))
        self.n_pending += len(u)
        if self.n_pending > max(len(self.keys), self.MERGE_AT):
            self._merge()

    def _merge(self) -> None:
        if not self.pending:
            return
        k = np.concatenate([self.keys] + [u for u, _ in self.pending])
        c = np.concatenate([self.counts] + [c for _, c in self.pending])
        self.keys, inv = np.unique(k, return_inverse=True)
        self.counts = np.bincount(inv, weights=c, minlength=len(self.keys)).astype(np.int64)
        self.pending, self.n_pending = [], 0

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        self._merge()
        return self.keys, self.counts


# ---------------------------------------------------------------- counting (step 2)

def _chunk_size(width: int, d_ffn: int, store_chunk: int, memory_mb: float, cap: int | None) -> int:
    """Neurons per unit: 20 bytes per (neuron, column) cell (int32 counts, int64 tally buffer and
    bincount result) must fit the budget."""
    ch = int(memory_mb * 2**20 // (20 * width))
    ch = max(1, min(d_ffn, ch, cap or d_ffn))
    if ch >= store_chunk:            # whole Zarr chunks: each is decompressed once per unit
        ch -= ch % store_chunk
    return ch


def _count_unit(arr, tok: _Tokens, n0: int, n1: int, ngram: bool, block: int) -> np.ndarray:
    """Exact counts [n1-n0, width] of one neuron chunk over all tokens."""
    ch, W = n1 - n0, tok.width(ngram)
    keys = tok.keys(ngram)
    cells = ch * W
    counts = np.zeros(cells, np.int32 if tok.n < 2**31 else np.int64)  # a cell counts at most n tokens
    buf = np.empty(max(cells, 1 << 16), np.int64)   # flat (neuron, column) ids waiting for a bincount
    used = 0
    # rows per slice so that one slice's tallies always fit an empty buffer
    step = max(8, (len(buf) // (ch * len(keys))) // 8 * 8)
    for s0 in range(0, tok.n, block):
        s1 = min(tok.n, s0 + block)
        raw = np.asarray(arr[n0:n1, s0 // 8:(s1 + 7) // 8])
        for a in range(s0, s1, step):
            b = min(s1, a + step)
            m = unpack(raw[:, (a - s0) // 8:(b - s0 + 7) // 8], b - a, 0)
            ni, ri = np.nonzero(m)
            f = len(ni)
            if not f:
                continue
            if used + f * len(keys) > len(buf):
                counts += np.bincount(buf[:used], minlength=cells)
                used = 0
            base = ni * W
            for k in keys:
                col = np.asarray(tok.cols[k][a:b])
                np.add(base, col[ri], out=buf[used:used + f])
                used += f
    if used:
        counts += np.bincount(buf[:used], minlength=cells)
    return counts.reshape(ch, W)


def _unit_tables(layer: int, n0: int, c: np.ndarray, tok: _Tokens, ngram: bool, top_k: int,
                 vocab: np.ndarray) -> dict[str, pa.Table]:
    """Exact counts of one unit -> the rows of every per-neuron table."""
    ch = c.shape[0]
    T, nd = tok.T, len(tok.domains)
    neurons = np.arange(n0, n0 + ch, dtype=np.int32)

    def lay(k: int) -> np.ndarray:
        return np.full(k, layer, np.int16)

    dom = c[:, :nd]
    out = {"neuron_fires": pa.table({"layer": lay(ch), "neuron": neurons, "fires": dom.sum(axis=1, dtype=np.int64)})}
    a, b = np.nonzero(dom)
    out["neuron_domains"] = pa.table({"layer": lay(len(a)), "neuron": neurons[a],
                                      "domain": pa.array(np.asarray(tok.domains, dtype=object)[b].tolist(), pa.string()),
                                      "fires": dom[a, b].astype(np.int64)})
    o = tok.offsets
    pos, posf = c[:, o["pos"]:o["pos"] + T], c[:, o["pos_full"]:o["pos_full"] + T]
    a, b = np.nonzero(pos)
    out["neuron_positions"] = pa.table({"layer": lay(len(a)), "neuron": neurons[a], "pos": b.astype(np.int32),
                                        "fires": pos[a, b].astype(np.int64),
                                        "fires_full": posf[a, b].astype(np.int64)})
    if tok.pos_full_n.sum() == 0:
        mi, frp = np.full(ch, np.nan), np.zeros((ch, T))
    else:
        mi, frp = positional_mi(posf, tok.pos_full_n)
    out["positional"] = pa.table({"layer": lay(ch), "neuron": neurons, "mi": pa.array(mi, mask=np.isnan(mi)),
                                  "fr_min": frp.min(axis=1), "fr_max": frp.max(axis=1),
                                  "switches_exact": switches(frp, 0.0), "switches_weak": switches(frp, WEAK_EPS)})
    cov = []
    for name, col, n in NGRAMS if ngram else NGRAMS[:1]:
        seg = c[:, o[name]:o[name] + len(tok.uniq[name])]
        s = segment_stats(seg, top_k, P_COV)
        ids = tok.uniq[name][s.top_col]
        out[f"neuron_{name}s"] = pa.table({
            "layer": lay(len(ids)), "neuron": neurons[s.top_row],
            col: ids.astype(np.int32 if n == 1 else np.int64), "fires": s.top_val, "rank": s.top_rank,
            "cum": s.top_cum, "total": s.total[s.top_row]})
        alive = np.flatnonzero(s.total > 0)
        cov.append((alive, n, s))
        if n in (1, 3):
            det = detectors(seg, s, tok.counts[name], TOK_MAX_COV if n == 1 else TRI_MAX_COV, P_TOKEN, P_SHARE)
            rows = [i for i, _, _ in det]
            lists = [tok.uniq[name][cols] for _, cols, _ in det]
            t = {"layer": pa.array(np.full(len(det), layer, np.int32)), "neuron": pa.array(neurons[rows]),
                 "n_covering": pa.array(s.n_covering[rows], pa.int64())}
            if n == 1:
                t["token_ids"] = pa.array([x.astype(np.int32) for x in lists], pa.list_(pa.int32()))
                t["tokens"] = pa.array([[vocab[x] if 0 <= x < len(vocab) else None for x in ids_]
                                        for ids_ in lists], pa.list_(pa.string()))
            else:
                t["ngrams"] = pa.array([x.astype(np.int64) for x in lists], pa.list_(pa.int64()))
            t["share"] = pa.array([sh for _, _, sh in det], pa.float64())
            out["token_detectors" if n == 1 else "trigram_detectors"] = pa.table(t)
    # coverage rows ordered by neuron, then n
    nn = np.concatenate([a for a, _, _ in cov])
    order = np.lexsort((np.concatenate([np.full(len(a), n) for a, n, _ in cov]), nn))
    out["coverage"] = pa.table({
        "layer": pa.array(np.full(len(nn), layer, np.int32)),
        "neuron": pa.array(neurons[nn][order]),
        "n": pa.array(np.concatenate([np.full(len(a), n, np.int32) for a, n, _ in cov])[order]),
        "n_covering": pa.array(np.concatenate([s.n_covering[a] for a, _, s in cov])[order]),
        "n_distinct": pa.array(np.concatenate([s.n_distinct[a] for a, _, s in cov])[order]),
        "fires": pa.array(np.concatenate([s.total[a] for a, _, s in cov])[order])})
    return out


TABLES = ("neuron_fires", "neuron_domains", "neuron_positions", "positional", "neuron_tokens", "neuron_bigrams",
          "neuron_trigrams", "coverage", "token_detectors", "trigram_detectors")
_EMPTY = {
    "neuron_bigrams": pa.schema([("layer", pa.int16()), ("neuron", pa.int32()), ("ngram", pa.int64()),
                                 ("fires", pa.int64()), ("rank", pa.int64()), ("cum", pa.int64()),
                                 ("total", pa.int64())]),
    "token_detectors": pa.schema([("layer", pa.int32()), ("neuron", pa.int32()), ("n_covering", pa.int64()),
                                  ("token_ids", pa.list_(pa.int32())), ("tokens", pa.list_(pa.string())),
                                  ("share", pa.float64())]),
    "trigram_detectors": pa.schema([("layer", pa.int32()), ("neuron", pa.int32()), ("n_covering", pa.int64()),
                                    ("ngrams", pa.list_(pa.int64())), ("share", pa.float64())]),
}
_EMPTY["neuron_trigrams"] = _EMPTY["neuron_bigrams"]


# ---------------------------------------------------------------- build

def build_index(store_path: str | Path, layers: Iterable[int] | None = None, progress: bool = True,
                force: bool = False, top_k: int = TOP_K, memory_mb: float = MEMORY_MB,
                neuron_chunk: int | None = None, workers: int = 0) -> Path:
    """Build (or resume, or leave as is when complete) the index of a store.

    layers: the layers that get bigram/trigram tables (default: the first half of the
    network); every recorded layer gets fires, domains, positions and tokens.
    top_k: n-grams kept per neuron in the n-gram tables (coverage and detectors at the
    paper's thresholds are exact regardless). memory_mb: budget of the units' counts, shared by
    the workers; neuron_chunk: an upper bound on the neurons per unit (tests). workers: units
    counted at once, in threads (0: one per available core); the files do not depend on it.
    """
    from tqdm import tqdm

    from .store import Store

    if int(top_k) < 1:
        raise InputError(f"top_k: expected a positive number of n-grams per neuron, got {top_k}")
    if not memory_mb > 0:
        raise InputError(f"memory_mb: expected a positive budget, got {memory_mb}")
    n_workers = resolve_workers(workers)
    st = Store(store_path)
    m = st.manifest
    ngram_layers = tuple(sorted(set(int(l) for l in layers))) if layers is not None else default_ngram_layers(m)
    bad = [l for l in ngram_layers if l not in m.layers]
    if bad:
        raise InputError(f"layers: expected recorded layers {list(m.layers)}, got {bad}")
    root = index_path(st.path)
    vocab_t = pq.read_table(st.path / "vocab.parquet", columns=["token_id", "token"])
    base = int(max(m.vocab_size, vocab_t.num_rows, 1))
    config = {"version": INDEX_VERSION, "ngram_layers": list(ngram_layers), "layers": list(m.layers),
              "vocab_base": base, "weak_eps": WEAK_EPS, "n_tokens": m.n_tokens, "seq_len": m.seq_len,
              "weights_sha256": m.weights_sha256, "prefix": bool(m.prefix_tokens), "top_k": int(top_k),
              "p_cov": P_COV, "tok_max_cov": TOK_MAX_COV, "tri_max_cov": TRI_MAX_COV, "p_token": P_TOKEN,
              "p_share": P_SHARE}
    info = read_index_info(st.path)
    if info is not None and not force and info.get("config") == config:
        return root
    if force or info is not None:
        shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    state_p = root / STATE
    state = json.loads(state_p.read_text()) if state_p.exists() else None
    tok = _Tokens(st, m, base, root / "_tmp")
    if state is None or state.get("config") != config:
        shutil.rmtree(root / "_parts", ignore_errors=True)
        # chunk sizes are fixed for the whole build, so a resumed build cuts the same units
        chunks = {str(ng): _chunk_size(tok.width(ng), m.d_ffn, m.neuron_chunk, memory_mb / n_workers, neuron_chunk)
                  for ng in (False, True)}
        state = {"config": config, "chunks": chunks, "done": []}
        atomic_write_text(state_p, json.dumps(state))
    (root / "_parts").mkdir(exist_ok=True)
    done = set(state["done"])
    units = [(l, n0, min(m.d_ffn, n0 + state["chunks"][str(l in ngram_layers)])) for l in m.layers
             for n0 in range(0, m.d_ffn, state["chunks"][str(l in ngram_layers)])]
    vocab = np.full(base, None, dtype=object)
    vocab[vocab_t.column("token_id").to_numpy()] = vocab_t.column("token").to_pylist()
    bar = tqdm(total=len(units), initial=sum(_unit_name(*u[:2]) in done for u in units), unit="chunk",
               desc="index", disable=not progress, dynamic_ncols=True)

    def run(unit: tuple[int, int, int]) -> str:
        layer, n0, n1 = unit
        ngram = layer in ngram_layers
        counts = _count_unit(st.packed(layer), tok, n0, n1, ngram, m.block_tokens)
        tables = _unit_tables(layer, n0, counts, tok, ngram, int(top_k), vocab)
        del counts
        name = _unit_name(layer, n0)
        d, tmpd = root / "_parts" / name, root / "_parts" / f".{name}.tmp"
        shutil.rmtree(tmpd, ignore_errors=True)
        tmpd.mkdir()
        for tname, t in tables.items():
            pq.write_table(t, tmpd / f"{tname}.parquet", compression="none")  # temporary: fast over small
        shutil.rmtree(d, ignore_errors=True)
        tmpd.rename(d)
        return name

    def finished(name: str) -> None:   # main thread only: the state file has one writer
        done.add(name)
        state["done"] = sorted(done)
        atomic_write_text(state_p, json.dumps(state))
        bar.update(1)

    pending = [u for u in units if _unit_name(*u[:2]) not in done]
    try:
        _run_units(run, pending, n_workers, finished)
    finally:
        bar.close()
    files = _assemble(root, [_unit_name(l, n0) for l, n0, _ in units], tok)
    # massive activations and vocabulary projection (SPEC §1.5, §1.7), before index.json marks it complete
    from .massive import build_capture_index
    from .projection import FILE as PROJECTION_FILE, build_projection_index

    build_capture_index(st.path, m)
    files.update({f"capture/{p.name}": file_digest(p) for p in sorted((root / "capture").glob("*.parquet"))})
    if (st.path / PROJECTION_FILE).exists():
        build_projection_index(st.path, m.layers, progress=progress)
        files["vocab_projection.parquet"] = file_digest(root / "vocab_projection.parquet")
    atomic_write_text(root / INDEX_FILE, json.dumps({"config": config, "files": files}, indent=1, sort_keys=True))
    shutil.rmtree(root / "_parts", ignore_errors=True)
    shutil.rmtree(root / "_tmp", ignore_errors=True)
    state_p.unlink(missing_ok=True)
    return root


def resolve_workers(workers: int) -> int:
    """0 -> the cores this process may use; otherwise the number given (at least 1)."""
    if workers < 0:
        raise InputError(f"workers: expected 0 (one per core) or a positive number, got {workers}")
    if workers:
        return workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:   # not on Linux
        return max(1, os.cpu_count() or 1)


def _run_units(run, units: list, n_workers: int, finished) -> None:
    """run(unit) -> name for every unit, n_workers at a time (numpy releases the GIL in the
    counting and sorting); finished(name) in this thread as each completes. On the first error
    the units not yet started are cancelled, the running ones end and are recorded, and the
    error is raised: a resumed build redoes only what did not finish."""
    if n_workers == 1 or len(units) <= 1:
        for u in units:
            finished(run(u))
        return
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    error: BaseException | None = None
    with ThreadPoolExecutor(n_workers, thread_name_prefix="actdb-index") as ex:
        todo = {ex.submit(run, u) for u in units}
        try:
            while todo:
                ready, todo = wait(todo, return_when=FIRST_EXCEPTION)
                for f in ready:
                    if f.cancelled():
                        continue
                    if f.exception() is None:
                        finished(f.result())
                    elif error is None:
                        error = f.exception()
                        for g in todo:
                            g.cancel()
        except BaseException:   # Ctrl-C in the main thread: let the running units end, start no more
            for g in todo:
                g.cancel()
            raise
    if error is not None:
        raise error


def _unit_name(layer: int, n0: int) -> str:
    return f"l{layer:04d}_n{n0:07d}"


def _assemble(root: Path, names: list[str], tok: _Tokens) -> dict[str, dict[str, Any]]:
    """Concatenate the units' parts (in layer, neuron order) and write the global counts;
    returns {file: digest} of everything written."""
    files = {}
    for t in TABLES:
        out, tmp = root / f"{t}.parquet", root / f".{t}.parquet.tmp"
        writer, pending, n_pending = None, [], 0
        for name in names:
            p = root / "_parts" / name / f"{t}.parquet"
            if not p.exists():
                continue
            part = pq.read_table(p)
            if writer is None:
                writer = pq.ParquetWriter(tmp, part.schema, compression="zstd")
            pending.append(part)
            n_pending += part.num_rows
            if n_pending >= ROW_GROUP:   # fixed-size row groups: the file does not depend on the chunking
                whole = pa.concat_tables(pending)
                cut = n_pending - n_pending % ROW_GROUP
                writer.write_table(whole.slice(0, cut), row_group_size=ROW_GROUP)
                pending, n_pending = [whole.slice(cut)], n_pending - cut
        if writer is None:
            pq.write_table(_EMPTY[t].empty_table(), tmp, compression="zstd")
        else:
            if n_pending:
                writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP)
            writer.close()
        tmp.replace(out)
        files[out.name] = file_digest(out)
    counts = {"position_counts": pa.table({"pos": np.arange(tok.T, dtype=np.int32), "n": tok.pos_n.astype(np.int64),
                                           "n_full": tok.pos_full_n.astype(np.int64)})}
    ngram = any((root / "_parts" / n / "neuron_bigrams.parquet").exists() for n in names)
    for name, col, n in NGRAMS:
        keep = n == 1 or ngram   # bigram/trigram counts only with n-gram layers, like their tables
        u = tok.uniq[name] if keep else np.zeros(0, np.int64)
        counts[f"{name}_counts"] = pa.table({col: u.astype(np.int32 if n == 1 else np.int64),
                                             "count": tok.counts[name] if keep else np.zeros(0, np.int64)})
    for t, table in counts.items():
        _write_parquet(table, root / f"{t}.parquet")
        files[f"{t}.parquet"] = file_digest(root / f"{t}.parquet")
    return files


def switches(fr: np.ndarray, eps: float) -> np.ndarray:
    """Per row of fr [neurons, T]: how many times the frequency goes from <= eps to >= 1-eps
    or back, along positions (positions in between are skipped)."""
    state = np.where(fr >= 1 - eps, 1, np.where(fr <= eps, 0, -1))
    out = np.zeros(fr.shape[0], np.int64)
    for i in range(fr.shape[0]):
        s = state[i][state[i] >= 0]
        out[i] = int(np.count_nonzero(s[1:] != s[:-1])) if len(s) > 1 else 0
    return out


def positional_mi(fires_full: np.ndarray, n_full: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """fires_full [neurons, T], n_full [T] -> (mi [neurons], fr_pos [neurons, T]) per SPEC §1.6."""
    with np.errstate(divide="ignore", invalid="ignore"):
        frp = fires_full / n_full[None, :]
        fr = fires_full.sum(axis=1) / n_full.sum()
        fr = fr[:, None]

        def term(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return np.where(a > 0, a * np.log(np.where(a > 0, a, 1) / np.where(b > 0, b, 1)), 0.0)

        mi = (term(frp, fr) + term(1 - frp, 1 - fr)).sum(axis=1) / n_full.shape[0]
    return mi, frp
