"""Out-of-core index: per-neuron aggregate tables in Parquet under STORE/index/.

Built neuron-chunk-major, so the cost follows the number of fires and peak memory follows
`memory_mb`, not the number of tokens or the firing rate:

  1. token arrays, once: per row its domain, position, position if its sequence is full length,
     and the local ids of its unigram / bigram / trigram among the distinct ones (index/_tmp/*.npy,
     memory-mapped; two passes over the token parts, so memory follows the distinct n-grams).
     Each statistic is a column range of one count matrix; rows the n-gram
     statistics exclude (the BOS position, SPEC §1.3) point at a dump column.
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

N-grams (SPEC §1.3): the n-gram ending at position k is (x_{k-n+1} … x_k) within its sequence,
slots before position 0 are PAD (not a token): the bigram at 0 is (PAD, x_0), the trigram at 1 is
(PAD, x_0, x_1). Every n is counted on the same rows: all but position 0 when the tokenizer puts a
prefix token (BOS) there (as an *ending* position; BOS is a token, so the bigram ending at 1 is
(BOS, x_1) and the trigram (PAD, BOS, x_1)), else all rows. So a neuron's n-gram fires (coverage
`fires`) are the same for n = 1, 2, 3. The n-gram tables keep the `top_k` n-grams of each
neuron by fires (descending, then id): `rank` is the 1-based rank, `cum` the running sum of fires
in that order, `total` the neuron's n-gram fires (all of them, not only the top_k).
An n-gram id is the base-V number of its slots (V = `vocab_base` in index.json = vocabulary + 1,
since index version 3): bigram = a*V + b, trigram = (a*V + b)*V + c, with token ids as digits and
`ngram_pad` = V - 1 for PAD; the views decode PAD to NULL.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError, StoreError
from ..io import atomic_write_text, file_digest, write_parquet
from ..store.index_info import INDEX_VERSION, index_path, read_index_info
from ..store.layout import INDEX_FILE, INDEX_STATE as STATE
from .count import chunk_size, count_unit
from .reduce import EMPTY_SCHEMAS, NGRAMS, P_COV, P_SHARE, P_TOKEN, TABLES, TOK_MAX_COV, TRI_MAX_COV, WEAK_EPS, unit_tables
from .tokens import TokenArrays

TOP_K = 64          # n-grams kept per neuron in neuron_tokens / bigrams / trigrams
MEMORY_MB = 512     # count matrix + tally buffer + bincount temporary of one unit
ROW_GROUP = 1 << 20  # rows per Parquet row group of the assembled tables


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


# ---------------------------------------------------------------- build

def _write_errors_in_one_line(fn):
    """A store whose index cannot be written (read-only, full, no permission) is one line
    naming the store and the file, not an internal error; a rerun resumes what was done."""
    @functools.wraps(fn)
    def wrapper(store_path, *args, **kwargs):
        try:
            return fn(store_path, *args, **kwargs)
        except OSError as e:  # pyarrow's write errors are OSErrors too, with the reason in the text
            why = e.strerror or (str(e).strip().splitlines() or [type(e).__name__])[0]
            where = f" ({e.filename})" if e.filename else ""
            raise StoreError(f"{store_path}: cannot write the index: {why}{where}") from None
    return wrapper


def _holding_writer_lock(build):
    """Run `build(store_path, ...)` holding the store's writer lock (actdb.store.lock), so no two
    writers touch one index; within an ingest, which holds the lock already, it passes through."""
    import functools

    @functools.wraps(build)
    def locked(store_path: str | Path, *args: Any, **kwargs: Any) -> Path:
        from ..store.lock import writer_lock
        from ..store.reader import StoreReader

        StoreReader(store_path)   # a complete store first: never a lock file in a folder that is not one
        with writer_lock(store_path, "index"):
            return build(store_path, *args, **kwargs)
    return locked


@_write_errors_in_one_line   # outermost: taking the lock writes a file too
@_holding_writer_lock
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

    from ..store.reader import StoreReader as Store

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
    pad = int(max(m.vocab_size, vocab_t.num_rows, 1))   # PAD digit of n-gram ids: past every token id
    base = pad + 1
    config = {"version": INDEX_VERSION, "ngram_layers": list(ngram_layers), "layers": list(m.layers),
              "vocab_base": base, "ngram_pad": pad, "weak_eps": WEAK_EPS, "n_tokens": m.n_tokens, "seq_len": m.seq_len,
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
    tok = TokenArrays(st, m, base, root / "_tmp")
    if state is None or state.get("config") != config:
        shutil.rmtree(root / "_parts", ignore_errors=True)
        # chunk sizes are fixed for the whole build, so a resumed build cuts the same units
        chunks = {str(ng): chunk_size(tok.width(ng), m.d_ffn, m.neuron_chunk, memory_mb / n_workers, neuron_chunk)
                  for ng in (False, True)}
        state = {"config": config, "chunks": chunks, "done": []}
        atomic_write_text(state_p, json.dumps(state))
    (root / "_parts").mkdir(exist_ok=True)
    done = set(state["done"])
    units = [(l, n0, min(m.d_ffn, n0 + state["chunks"][str(l in ngram_layers)])) for l in m.layers
             for n0 in range(0, m.d_ffn, state["chunks"][str(l in ngram_layers)])]
    vocab = np.full(pad, None, dtype=object)
    vocab[vocab_t.column("token_id").to_numpy()] = vocab_t.column("token").to_pylist()
    bar = tqdm(total=len(units), initial=sum(_unit_name(*u[:2]) in done for u in units), unit="chunk",
               desc="index", disable=not progress, dynamic_ncols=True)

    def run(unit: tuple[int, int, int]) -> str:
        layer, n0, n1 = unit
        ngram = layer in ngram_layers
        counts = count_unit(st.packed(layer), tok, n0, n1, ngram, m.block_tokens)
        tables = unit_tables(layer, n0, counts, tok, ngram, int(top_k), vocab)
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
    from ..store.layout import PROJECTION_FILE
    from .massive import build_capture_index
    from .projection import build_projection_index

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


def _assemble(root: Path, names: list[str], tok: TokenArrays) -> dict[str, dict[str, Any]]:
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
            pq.write_table(EMPTY_SCHEMAS[t].empty_table(), tmp, compression="zstd")
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
        write_parquet(table, root / f"{t}.parquet")
        files[f"{t}.parquet"] = file_digest(root / f"{t}.parquet")
    return files
