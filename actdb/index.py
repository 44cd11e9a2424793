"""Out-of-core index: per-neuron aggregate tables in Parquet under STORE/index/.

Built block by block from the packed masks (one mask block = one token part), so peak
memory is bounded by a block × all neurons of one layer, never by the number of tokens:

  pass 1 (per block, resumable): partial counts of the block, written to
         index/_parts/bBBBBBB/<table>.parquet; index/_state.json lists the finished blocks.
  pass 2 (reduce): DuckDB sums the partials (spilling to index/_tmp if it must) into

    neuron_fires.parquet      layer, neuron, fires                      (every neuron, dead too)
    neuron_domains.parquet    layer, neuron, domain, fires              (fires > 0 only)
    neuron_positions.parquet  layer, neuron, pos, fires, fires_full     (fires > 0 only)
    position_counts.parquet   pos, n, n_full                            (full = sequences of seq_len)
    neuron_tokens.parquet     layer, neuron, token_id, fires, rank, cum, total
    neuron_bigrams.parquet    layer, neuron, ngram, fires, rank, cum, total  (n-gram layers only)
    neuron_trigrams.parquet   same for trigrams
    token_counts / bigram_counts / trigram_counts .parquet   token_id|ngram, count
    positional.parquet        layer, neuron, mi, fr_min, fr_max, switches_exact, switches_weak
    index.json                written last: the index is complete exactly when it exists

N-gram statistics (neuron_tokens/bigrams/trigrams and their counts) skip every n-gram that
contains position 0 of a sequence when the tokenizer puts a prefix token (BOS) there
(SPEC §1.3); `rank` is the 1-based rank of the n-gram among the neuron's n-grams by fires
(descending), `cum` the running sum of fires in that order, `total` the neuron's n-gram fires.
An n-gram id is the base-V number of its token ids (V = `vocab_base` in index.json):
bigram = a*V + b, trigram = (a*V + b)*V + c.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import InputError, StoreError
from .manifest import atomic_write_text
from .packing import unpack

INDEX_DIR = "index"
INDEX_FILE = "index.json"
STATE = "_state.json"
INDEX_VERSION = 1
WEAK_EPS = 0.05  # positional patterns: a frequency within this of 0 or 1 counts as (weakly) extreme


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


class _BlockCounter:
    """Partial counts of one block of rows, for one layer at a time."""

    def __init__(self, manifest, tok: dict[str, np.ndarray], prev: np.ndarray, full_seqs: np.ndarray,
                 base: int, ngram: bool) -> None:
        self.T = manifest.seq_len
        first = 1 if manifest.prefix_tokens else 0
        pos = tok["pos"].astype(np.int64)
        seq = tok["seq"]
        ids = tok["token_id"].astype(np.int64)
        n = len(ids)
        # previous two token ids in the same sequence (rows of the previous block when needed)
        ext_ids = np.concatenate([prev, ids])
        p1 = ext_ids[len(prev) - 1:len(prev) - 1 + n] if len(prev) >= 1 else np.r_[-1, ids[:-1]]
        p2 = ext_ids[len(prev) - 2:len(prev) - 2 + n] if len(prev) >= 2 else np.r_[-1, -1, ids[:-2]][:n]
        self.n = n
        self.pos = pos
        full = np.isin(seq, full_seqs)
        self.pos_full = np.where(full, pos, -1)
        self.domain_codes = tok["domain_codes"]
        self.domains = tok["domains"]
        self.keys: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # name -> (local index or -1, unique keys)
        specs = [("token", ids, pos >= first)]
        if ngram:
            specs += [("bigram", p1 * base + ids, pos >= first + 1),
                      ("trigram", (p2 * base + p1) * base + ids, pos >= first + 2)]
        self.totals: dict[str, pa.Table] = {}
        for name, key, valid in specs:
            uniq, inv = np.unique(key[valid], return_inverse=True)
            local = np.full(n, -1, dtype=np.int64)
            local[valid] = inv
            self.keys[name] = (local, uniq)
            cnt = np.bincount(inv, minlength=len(uniq))
            col = "token_id" if name == "token" else "ngram"
            self.totals[name] = pa.table({col: pa.array(uniq), "count": pa.array(cnt.astype(np.int64))})
        pn = np.bincount(pos, minlength=self.T)
        pf = np.bincount(pos[full], minlength=self.T)
        self.totals["position"] = pa.table({"pos": pa.array(np.arange(len(pn), dtype=np.int32)),
                                            "n": pa.array(pn.astype(np.int64)),
                                            "n_full": pa.array(pf.astype(np.int64))})

    def count(self, layer: int, n0: int, m: np.ndarray, out: dict[str, list]) -> None:
        """m: bool [chunk, rows] for neurons n0.. of `layer`; appends partial tables to out."""
        ch = m.shape[0]
        neurons = np.arange(n0, n0 + ch, dtype=np.int32)
        lay = np.full(ch, layer, dtype=np.int16)
        out["neuron_fires"].append(pa.table({"layer": lay, "neuron": neurons,
                                             "fires": m.sum(axis=1, dtype=np.int64)}))
        ni, ri = np.nonzero(m)
        if not len(ni):
            return
        ni = ni.astype(np.int64)

        def tally(local: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            k = local[ri]
            ok = k >= 0
            c = np.bincount(ni[ok] * width + k[ok], minlength=ch * width)
            nz = np.flatnonzero(c)
            return nz // width, nz % width, c[nz]

        # domains
        nd = len(self.domains)
        a, b, c = tally(self.domain_codes.astype(np.int64), nd)
        out["neuron_domains"].append(pa.table({
            "layer": np.full(len(a), layer, np.int16), "neuron": (a + n0).astype(np.int32),
            "domain": pa.array(np.asarray(self.domains, dtype=object)[b].tolist(), pa.string()), "fires": c}))
        # positions: all sequences and full-length ones
        a, b, c = tally(self.pos, self.T)
        a2, b2, c2 = tally(self.pos_full, self.T)
        full = np.zeros((ch, self.T), np.int64)
        full[a2, b2] = c2
        out["neuron_positions"].append(pa.table({
            "layer": np.full(len(a), layer, np.int16), "neuron": (a + n0).astype(np.int32),
            "pos": b.astype(np.int32), "fires": c, "fires_full": full[a, b]}))
        for name, (local, uniq) in self.keys.items():
            if not len(uniq):
                continue
            a, b, c = tally(local, len(uniq))
            col = "token_id" if name == "token" else "ngram"
            out[f"neuron_{name}s"].append(pa.table({
                "layer": np.full(len(a), layer, np.int16), "neuron": (a + n0).astype(np.int32),
                col: uniq[b], "fires": c}))


def _read_tokens(path: Path) -> dict[str, Any]:
    t = pq.read_table(path, columns=["seq", "pos", "token_id", "domain"])
    dom = t.column("domain").combine_chunks()
    if pa.types.is_dictionary(dom.type):
        codes = dom.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        domains = dom.dictionary.to_pylist()
    else:
        domains, codes = np.unique(np.asarray(dom.to_pylist(), dtype=object), return_inverse=True)
        domains = list(domains)
    return {"seq": t.column("seq").to_numpy(), "pos": t.column("pos").to_numpy(),
            "token_id": t.column("token_id").to_numpy(), "domain_codes": codes, "domains": domains}


def build_index(store_path: str | Path, layers: Iterable[int] | None = None, progress: bool = True,
                force: bool = False, neuron_chunk: int = 512, memory_limit: str = "4GB") -> Path:
    """Build (or resume, or leave as is when complete) the index of a store.

    layers: the layers that get bigram/trigram tables (default: the first half of the
    network); every recorded layer gets fires, domains, positions and tokens.
    """
    from .store import Store

    st = Store(store_path)
    m = st.manifest
    ngram_layers = tuple(sorted(set(int(l) for l in layers))) if layers is not None else default_ngram_layers(m)
    bad = [l for l in ngram_layers if l not in m.layers]
    if bad:
        raise InputError(f"layers: expected recorded layers {list(m.layers)}, got {bad}")
    root = index_path(st.path)
    vocab_n = pq.read_metadata(st.path / "vocab.parquet").num_rows
    base = int(max(m.vocab_size, vocab_n, 1))
    config = {"version": INDEX_VERSION, "ngram_layers": list(ngram_layers), "layers": list(m.layers),
              "vocab_base": base, "weak_eps": WEAK_EPS, "n_tokens": m.n_tokens, "seq_len": m.seq_len,
              "weights_sha256": m.weights_sha256, "prefix": bool(m.prefix_tokens)}
    info = read_index_info(st.path)
    if info is not None and not force and info.get("config") == config:
        return root
    if force or (info is not None and info.get("config") != config):
        shutil.rmtree(root, ignore_errors=True)
    (root / "_parts").mkdir(parents=True, exist_ok=True)
    state_p = root / STATE
    state = json.loads(state_p.read_text()) if state_p.exists() else None
    if state is None or state.get("config") != config:
        shutil.rmtree(root / "_parts", ignore_errors=True)
        (root / "_parts").mkdir(parents=True)
        state = {"config": config, "done": []}
        atomic_write_text(state_p, json.dumps(state))
    done = set(state["done"])

    parts = sorted((st.path / "tokens").glob("part-*.parquet"))
    bb = m.block_tokens
    if len(parts) != (m.n_tokens + bb - 1) // bb:
        raise StoreError(f"{st.path / 'tokens'}: expected {(m.n_tokens + bb - 1) // bb} token parts, got {len(parts)}")
    # sequences of full length (SPEC §1.6): those that reach position seq_len - 1
    full = []
    for p in parts:
        t = pq.read_table(p, columns=["seq", "pos"])
        s, ps = t.column("seq").to_numpy(), t.column("pos").to_numpy()
        full.append(s[ps == m.seq_len - 1])
    full_seqs = np.unique(np.concatenate(full)) if full else np.zeros(0, np.int64)

    from tqdm import tqdm

    bar = tqdm(total=len(parts), initial=len(done), unit="block", desc="index", disable=not progress,
               dynamic_ncols=True)
    prev_tail = np.zeros(0, np.int64)
    for b, p in enumerate(parts):
        tok = _read_tokens(p)
        # previous tokens of the same sequence, for n-grams that straddle the block boundary
        prev = prev_tail
        ids = tok["token_id"].astype(np.int64)
        next_tail = ids[-2:]
        if b in done:
            prev_tail = next_tail
            continue
        n = len(ids)
        counter = _BlockCounter(m, tok, prev, full_seqs, base, ngram=False)
        counter_ng = _BlockCounter(m, tok, prev, full_seqs, base, ngram=True) if ngram_layers else None
        out: dict[str, list] = {k: [] for k in ("neuron_fires", "neuron_domains", "neuron_positions",
                                                  "neuron_tokens", "neuron_bigrams", "neuron_trigrams")}
        start = b * bb
        for layer in m.layers:
            c = counter_ng if layer in ngram_layers else counter
            arr = st.packed(layer)
            raw = np.asarray(arr[:, start // 8:(start + n + 7) // 8])
            for n0 in range(0, m.d_ffn, neuron_chunk):
                mk = unpack(raw[n0:n0 + neuron_chunk], n, 0)
                c.count(layer, n0, mk, out)
        d = root / "_parts" / f"b{b:06d}"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        for name, tables in out.items():
            if tables:
                _write_parquet(pa.concat_tables(tables), d / f"{name}.parquet")
        totals = (counter_ng or counter).totals
        for name, t in totals.items():
            _write_parquet(t, d / f"{name}_counts.parquet")
        state["done"] = sorted(done | {b})
        done.add(b)
        atomic_write_text(state_p, json.dumps(state))
        prev_tail = next_tail
        bar.update(1)
    bar.close()
    # massive activations and vocabulary projection (SPEC §1.5, §1.7), before index.json marks it complete
    from .massive import build_capture_index
    from .projection import FILE as PROJECTION_FILE, build_projection_index

    build_capture_index(st.path, m)
    if (st.path / PROJECTION_FILE).exists():
        build_projection_index(st.path, m.layers)
    _reduce(root, m, config, memory_limit)
    return root


def _reduce(root: Path, m, config: dict[str, Any], memory_limit: str = "4GB") -> None:
    import duckdb

    tmp = root / "_tmp"
    tmp.mkdir(exist_ok=True)
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    con.execute(f"SET temp_directory = '{_q(str(tmp))}'")
    con.execute(f"SET memory_limit = '{_q(memory_limit)}'")
    con.execute("SET preserve_insertion_order = false")
    parts = _q(str(root / "_parts"))

    def src(name: str) -> str:
        return f"read_parquet('{parts}/*/{name}.parquet')"

    def has(name: str) -> bool:
        return any((root / "_parts").glob(f"*/{name}.parquet"))

    def copy(sql: str, name: str) -> None:
        out = root / f"{name}.parquet"
        tmpf = root / f".{name}.parquet.tmp"
        con.execute(f"COPY ({sql}) TO '{_q(str(tmpf))}' (FORMAT parquet, COMPRESSION zstd)")
        tmpf.replace(out)

    copy(f"SELECT layer, neuron, sum(fires)::BIGINT AS fires FROM {src('neuron_fires')} "
         "GROUP BY ALL ORDER BY layer, neuron", "neuron_fires")
    empty = {"neuron_domains": "SELECT NULL::SMALLINT layer, NULL::INT neuron, NULL::VARCHAR domain, NULL::BIGINT fires LIMIT 0",
             "neuron_positions": "SELECT NULL::SMALLINT layer, NULL::INT neuron, NULL::INT pos, NULL::BIGINT fires, NULL::BIGINT fires_full LIMIT 0"}
    copy(f"SELECT layer, neuron, domain, sum(fires)::BIGINT AS fires FROM {src('neuron_domains')} "
         "GROUP BY ALL ORDER BY layer, neuron, domain" if has("neuron_domains") else empty["neuron_domains"],
         "neuron_domains")
    copy(f"SELECT layer, neuron, pos, sum(fires)::BIGINT AS fires, sum(fires_full)::BIGINT AS fires_full "
         f"FROM {src('neuron_positions')} GROUP BY ALL ORDER BY layer, neuron, pos"
         if has("neuron_positions") else empty["neuron_positions"], "neuron_positions")
    copy(f"SELECT pos, sum(n)::BIGINT AS n, sum(n_full)::BIGINT AS n_full FROM {src('position_counts')} "
         "GROUP BY ALL ORDER BY pos", "position_counts")
    for name, col in (("token", "token_id"), ("bigram", "ngram"), ("trigram", "ngram")):
        ctype = "INT" if name == "token" else "BIGINT"
        if has(f"{name}_counts"):
            copy(f"SELECT {col}::{ctype} AS {col}, sum(count)::BIGINT AS count FROM {src(name + '_counts')} "
                 f"GROUP BY ALL ORDER BY {col}", f"{name}_counts")
        else:
            copy(f"SELECT NULL::{ctype} AS {col}, NULL::BIGINT AS count LIMIT 0", f"{name}_counts")
        tname = f"neuron_{name}s"
        if has(tname):
            copy(f"""SELECT layer, neuron, {col}, fires,
                       row_number() OVER w AS rank,
                       sum(fires) OVER (w ROWS UNBOUNDED PRECEDING)::BIGINT AS cum,
                       sum(fires) OVER (PARTITION BY layer, neuron)::BIGINT AS total
                     FROM (SELECT layer, neuron, {col}::{ctype} AS {col}, sum(fires)::BIGINT AS fires
                           FROM {src(tname)} GROUP BY ALL)
                     WINDOW w AS (PARTITION BY layer, neuron ORDER BY fires DESC, {col})
                     ORDER BY layer, neuron, rank""", tname)
        else:
            copy(f"SELECT NULL::SMALLINT layer, NULL::INT neuron, NULL::{ctype} {col}, NULL::BIGINT fires, "
                 "NULL::BIGINT rank, NULL::BIGINT cum, NULL::BIGINT total LIMIT 0", tname)
    _positional(root, m, con)
    con.close()
    _precompute(root, m, config)
    atomic_write_text(root / INDEX_FILE, json.dumps({"config": config}, indent=1, sort_keys=True))
    shutil.rmtree(root / "_parts", ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
    (root / STATE).unlink(missing_ok=True)


def _precompute(root: Path, m, config: dict[str, Any]) -> None:
    """Coverage and detectors at the paper's thresholds, so the saved queries read small
    tables; other thresholds are answered by scanning the n-gram tables (see actdb.db)."""
    import duckdb

    from .db import PRECOMPUTED, _views

    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    con.execute(f"SET temp_directory = '{_q(str(root / '_tmp'))}'")
    for stmt in _views(root.parent, m, {"config": config}, pre=False):
        con.execute(stmt)
    for name in PRECOMPUTED:
        tmpf = root / f".{name}.parquet.tmp"
        con.execute(f"COPY (SELECT * FROM {name}_at() ORDER BY ALL) TO '{_q(str(tmpf))}' (FORMAT parquet)")
        tmpf.replace(root / f"{name}.parquet")
    con.close()


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


def _positional(root: Path, m, con) -> None:
    pc = con.execute(f"SELECT pos, n_full FROM read_parquet('{_q(str(root / 'position_counts.parquet'))}') "
                     "ORDER BY pos").fetchnumpy()
    T = m.seq_len
    n_full = np.zeros(T, np.int64)
    n_full[pc["pos"].astype(np.int64)] = pc["n_full"]
    np_path = _q(str(root / "neuron_positions.parquet"))
    tables = []
    for layer in m.layers:
        r = con.execute(f"SELECT neuron, pos, fires_full FROM read_parquet('{np_path}') WHERE layer = ?",
                        [layer]).fetchnumpy()
        ff = np.zeros((m.d_ffn, T), np.int64)
        ff[r["neuron"].astype(np.int64), r["pos"].astype(np.int64)] = r["fires_full"]
        if n_full.sum() == 0:
            mi = np.full(m.d_ffn, np.nan)
            frp = np.zeros((m.d_ffn, T))
        else:
            mi, frp = positional_mi(ff, n_full)
        tables.append(pa.table({
            "layer": np.full(m.d_ffn, layer, np.int16), "neuron": np.arange(m.d_ffn, dtype=np.int32),
            "mi": pa.array(mi, mask=np.isnan(mi)), "fr_min": frp.min(axis=1), "fr_max": frp.max(axis=1),
            "switches_exact": switches(frp, 0.0), "switches_weak": switches(frp, WEAK_EPS)}))
    _write_parquet(pa.concat_tables(tables), root / "positional.parquet")


def _q(s: str) -> str:
    return s.replace("'", "''")
