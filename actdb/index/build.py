"""Out-of-core index: per-neuron aggregate tables in Parquet under STORE/index/.

Built neuron-chunk-major, so the cost follows the number of fires and peak memory follows
`memory_mb`, not the number of tokens or the firing rate:

  1. token arrays, once: per row its domain, position, position if its sequence is full length,
     and the local ids of its unigram / bigram / trigram among the distinct ones (index/_tmp/*.npy,
     read a block at a time, never mapped; two passes over the token parts, so memory follows the
     distinct n-grams).
     Each statistic is a column range of one count matrix; rows the n-gram
     statistics exclude (the BOS position) point at a dump column.
  2. per unit (layer, neuron chunk), resumable (index/_state.json lists the finished units):
     stream that chunk's mask blocks over all tokens, tally exact counts [chunk, columns] (np.bincount
     of the fires on sparse blocks, torch index_add_ on dense ones and on --device; index/count.py),
     and reduce them in memory to the rows the tables keep (index/_parts/UNIT/).
     The chunk is the largest whose counts (4 B per cell with the compiled kernel, 24 B with
     the numpy and torch paths' tally buffers: count.cell_bytes) fit `memory_mb` / workers;
     units run in worker threads.
  3. concatenate the parts into

    neuron_fires.parquet      layer, neuron, fires                      (every neuron, dead too)
    neuron_domains.parquet    layer, neuron, domain, fires              (fires > 0 only)
    neuron_positions.parquet  layer, neuron, pos, fires, fires_full     (fires > 0 only)
    position_counts.parquet   pos, n, n_full                            (full = sequences of seq_len)
    neuron_tokens.parquet     layer, neuron, token_id, fires, rank, cum, total   (top_k per neuron)
    neuron_bigrams.parquet    layer, neuron, ngram, fires, rank, cum, total      (n-gram layers only)
    neuron_trigrams.parquet   same for trigrams
    token_counts / bigram_counts / trigram_counts .parquet   token_id|ngram, count
    coverage.parquet          layer, neuron, n, n_covering, n_distinct, fires   (exact, at p_cov)
    token_detectors.parquet / trigram_detectors.parquet   exact, at the thresholds of the build
                              (settings.IndexSettings: the paper's by default)
    positional.parquet        layer, neuron, mi, fr_min, fr_max, switches_exact, switches_weak
    index.json                written last (the index is complete exactly when it exists):
                              config (top_k and every threshold included, store/index_info.py)
                              and every file's bytes and sha256

N-grams: the n-gram ending at position k is (x_{k-n+1} … x_k) within its sequence,
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

import dataclasses
import functools
import json
import shutil
import sys
import threading
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..faults import point as fault_point
from ..errors import InputError, StoreError
from ..files import (PARQUET_OPTIONS, atomic_path, atomic_write_text, exchange_dirs, file_digest, remove_temporaries,
                  write_parquet)
from ..grammar import parse_layer_list
from ..settings import IndexSettings, RaySettings
from ..store.index_info import INDEX_VERSION, IndexConfig, IndexInfo, index_path, read_index_info
from ..store.record import parse_json, read_text, seal, unseal
from ..store.layout import (INDEX_BUILD_DIR, INDEX_FILE, INDEX_NEIGHBOURS, INDEX_OLD_DIR, INDEX_PARTS,
                            INDEX_PROJECTION_FILE, INDEX_STATE as STATE, INDEX_TMP, PROJECTION_FILE, VOCAB_FILE,
                            rule_dir)
from ..store.writer import refuse_foreign_files
from ..devices import device_name as resolve_device, resolve_workers
from .count import cell_bytes, chunk_size, count_unit
from .reduce import EMPTY_SCHEMAS, NGRAMS, TABLES, unit_tables
from .tokens import TokenArrays

ROW_GROUP = 1 << 20  # rows per Parquet row group of the assembled tables
# the units' parts are read back once by _assemble: fast over small, still page-checksummed
_PART_OPTIONS = {**PARQUET_OPTIONS, "compression": "none"}


def default_ngram_layers(manifest) -> tuple[int, ...]:
    """The first half of the network (the papers find n-gram neurons in the lower layers)."""
    half = (manifest.n_layers + 1) // 2
    chosen = tuple(l for l in manifest.layers if l < half)
    return chosen or (min(manifest.layers),)


def _ngram_layers(layers: Iterable[int] | str | None, m) -> tuple[int, ...]:
    """The layers given as a list or in the --layers grammar (grammar.parse_layer_list),
    which must be recorded ones; None: the default."""
    if layers is None:
        return default_ngram_layers(m)
    if isinstance(layers, str):
        chosen = parse_layer_list(layers, m.n_layers)
    else:
        chosen = tuple(sorted(set(int(l) for l in layers)))
    bad = [l for l in chosen if l not in m.layers]
    if bad:
        raise InputError(f"--layers: expected recorded layers {list(m.layers)}, got {bad}")
    return chosen


def _as_json(obj: Any) -> Any:
    """A dataclass as the JSON value it is written as (tuples become lists), for comparisons."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


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
def build_index(store_path: str | Path, layers: Iterable[int] | str | None = None,
                settings: IndexSettings | None = None, neuron_chunk: int | None = None, rule: str | None = None,
                ray: RaySettings | None = None, **options: Any) -> Path:
    """Build (or resume, or leave as is when complete) the index of a store.

    settings (or its fields as keyword options: progress, force, top_k, memory_mb, workers, device,
    the thresholds): see settings.IndexSettings. layers: the layers that get bigram/trigram tables
    (a list, or the --layers grammar; default: the first half of the network); every recorded
    layer gets fires, domains, positions and tokens. neuron_chunk: an upper bound on the neurons
    per unit (tests). ray (--ray): the units run as Ray tasks (ray_index.py), every rule's. The
    files do not depend on the workers, the device, the memory budget or Ray.

    A first build is made in place (STORE/index/) and resumes where a killed one stopped. A
    rebuild over a complete index (--force, or other settings) is made beside it, in
    STORE/_index_build/, and swapped in only when complete: until then the old index answers,
    and a failed or killed rebuild leaves it answering (the half-built folder is removed by
    the next build).

    rule: the fire rule whose index to build, in that rule's folder (store.layout.rule_dir);
    None: every recorded rule, the first one first. The first rule's index also holds the tables no
    rule changes (massive activations, vocabulary projection); returns its folder.
    """
    from tqdm import tqdm

    from ..store.reader import StoreReader as Store

    s = dataclasses.replace(settings or IndexSettings(), **options)   # validates every field
    n_workers = resolve_workers(s.workers)
    device = resolve_device(s.device)
    st = Store(store_path, rule=rule)
    m = st.manifest
    if rule is None and len(st.rules) > 1:
        first = build_index(store_path, layers, s, neuron_chunk, rule=st.rules[0], ray=ray)
        for other in st.rules[1:]:
            build_index(store_path, layers, s, neuron_chunk, rule=other, ray=ray)
        return first
    shared = st.rule == st.rules[0]   # the rule-independent tables live in the first rule's index
    rule_base = rule_dir(st.path, st.rule)
    ngram_layers = _ngram_layers(layers if layers is not None else s.layers, m)
    live = index_path(rule_base)
    # a rebuild deletes these folders: a user's file in them is refused before anything goes
    refuse_foreign_files(st.path, [live, rule_base / INDEX_BUILD_DIR, rule_base / INDEX_OLD_DIR])
    _recover(rule_base)
    if live.exists():   # what a killed build's atomic writes left (we hold the writer lock)
        remove_temporaries(live)
    vocab_t = st.table(VOCAB_FILE, columns=["token_id", "token"], arrow=True)
    pad = int(max(m.vocab_size, vocab_t.num_rows, 1))   # PAD digit of n-gram ids: past every token id
    base = pad + 1
    config = IndexConfig(version=INDEX_VERSION, layers=tuple(m.layers), ngram_layers=ngram_layers, vocab_base=base,
                         ngram_pad=pad, n_tokens=m.n_tokens, seq_len=m.seq_len, weights_sha256=m.weights_sha256,
                         prefix=bool(m.prefix_tokens), top_k=s.top_k, store=m.identity, rule=st.rule,
                         neighbours=s.neighbours, **s.thresholds())
    config_json = _as_json(config)
    try:
        info = read_index_info(rule_base)
    except StoreError:   # a damaged or old record: rebuilt beside it like any other
        info = None
    if info is not None and not s.force and info.config == config:
        return live
    beside = (live / INDEX_FILE).exists()   # a complete index (maybe unreadable) answers until the swap
    root = rule_base / INDEX_BUILD_DIR if beside else live
    if s.force and not beside:
        shutil.rmtree(live, ignore_errors=True)   # a partial build: nothing answers from it
    root.mkdir(parents=True, exist_ok=True)
    state_p = root / STATE
    state = _read_state(state_p)
    tok = TokenArrays(st, m, base, root / INDEX_TMP)
    if state is None or state.get("config") != config_json:
        shutil.rmtree(root / INDEX_PARTS, ignore_errors=True)
        # chunk sizes are fixed for the whole build, so a resumed build cuts the same units
        cell = cell_bytes("cpu" if ray is not None and ray.on else device, m.n_tokens)
        chunks = {str(ng): chunk_size(tok.width(ng), m.d_ffn, m.neuron_chunk, s.memory_mb / n_workers, neuron_chunk,
                                      cell) for ng in (False, True)}
        state = {"config": config_json, "chunks": chunks, "done": []}
        atomic_write_text(state_p, seal(state))
    (root / INDEX_PARTS).mkdir(exist_ok=True)
    done = set(state["done"])
    units = [(l, n0, min(m.d_ffn, n0 + state["chunks"][str(l in ngram_layers)])) for l in m.layers
             for n0 in range(0, m.d_ffn, state["chunks"][str(l in ngram_layers)])]
    vocab = np.full(pad, None, dtype=object)
    vocab[vocab_t.column("token_id").to_numpy()] = vocab_t.column("token").to_pylist()
    bar = tqdm(total=len(units), initial=sum(_unit_name(*u[:2]) in done for u in units), unit="chunk",
               desc="index" if len(st.rules) == 1 else f"index {st.rule}", disable=not s.progress, dynamic_ncols=True)

    def run(unit: tuple[int, int, int]) -> str:
        return build_unit(st, tok, root, unit, unit[0] in ngram_layers, config, vocab, device)

    def finished(name: str) -> None:   # main thread only: the state file has one writer
        done.add(name)
        state["done"] = sorted(done)
        atomic_write_text(state_p, seal(state))
        bar.update(1)

    pending = [u for u in units if _unit_name(*u[:2]) not in done]
    try:
        if ray is not None and ray.on:
            from .ray_index import run_units_on_ray

            run_units_on_ray(ray, st.path, st.rule, root, pending, ngram_layers, config, vocab, tok, finished,
                             build_unit)
        else:
            _run_units(run, pending, n_workers, finished)
    finally:
        bar.close()
        tok.close()   # the units are counted: the column files are not read again
    # massive activations and vocabulary projection, before index.json marks it complete
    from concurrent.futures import ThreadPoolExecutor

    from .massive import build_capture_index
    from .vocab_projection import build_projection_index

    stop = threading.Event()
    with ThreadPoolExecutor(1, thread_name_prefix="actdb-projection") as ex:
        # the projection (a matmul on every core) beside the assembly and the capture tables (one
        # core, mostly Parquet): neither reads the other's files
        projection = None
        if shared and (st.path / PROJECTION_FILE).exists():
            projection = ex.submit(build_projection_index, st, m.layers, progress=s.progress, out=root,
                                   stop=stop)
        try:
            files = _assemble(root, [_unit_name(l, n0) for l, n0, _ in units], tok)
            if shared:
                files.update({rel: file_digest(root / rel)
                              for rel in build_capture_index(st, root, config.abs_min, config.ratio)})
        except BaseException:   # an error or Ctrl-C: the projection stops at its next layer
            stop.set()
            raise
        if projection is not None:
            projection.result()
            files[INDEX_PROJECTION_FILE] = file_digest(root / INDEX_PROJECTION_FILE)
    if s.neighbours:   # co-firing (actdb/cofire): its own pass over every mask
        from ..cofire import build_neighbours

        out = build_neighbours(st, root / f"{INDEX_NEIGHBOURS}.parquet", s.neighbours, root / INDEX_TMP, device,
                               s.memory_mb, n_workers, progress=s.progress)
        files[out.name] = file_digest(out)
    shutil.rmtree(root / INDEX_PARTS, ignore_errors=True)
    shutil.rmtree(root / INDEX_TMP, ignore_errors=True)
    state_p.unlink(missing_ok=True)
    IndexInfo(config=config, files=files).write(root)
    if beside:
        _swap_in(live, root)
    return live


def _read_state(path: Path) -> dict[str, Any] | None:
    """A resumable build's state (index/_state.json); None when there is none, or when it is not
    one this build wrote whole (edited, damaged, of another version): the build then starts over,
    which gives the same files."""
    text = read_text(path)
    if text is None:
        return None
    try:
        state = unseal(parse_json(text, str(path), "an index build state"), str(path))
    except StoreError as e:
        print(f"actdb index: {e}; starting the build over", file=sys.stderr)
        return None
    ok = isinstance(state, dict) and isinstance(state.get("done"), list) and isinstance(state.get("chunks"), dict)
    return state if ok else None


def _recover(store: Path) -> None:
    """Undo what a killed rebuild left: the half-built folder goes; if it was killed between the
    two renames of a swap without an atomic exchange, the complete index comes back first."""
    live, new, old = index_path(store), store / INDEX_BUILD_DIR, store / INDEX_OLD_DIR
    if not live.exists():
        for cand in (new, old):   # the new one if it was complete, else the old one
            if (cand / INDEX_FILE).exists():
                cand.rename(live)
                break
    shutil.rmtree(new, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def _swap_in(live: Path, new: Path) -> None:
    """Put the complete index `new` at `live`. One atomic exchange where the OS has one (Linux),
    so STORE/index/ always holds a complete index; else two renames, microseconds apart."""
    if not exchange_dirs(new, live):
        old = live.with_name(INDEX_OLD_DIR)
        shutil.rmtree(old, ignore_errors=True)
        live.rename(old)
        new.rename(live)
        new = old
    shutil.rmtree(new)   # the old index, now out of the way


def _run_units(run, units: list, n_workers: int, finished) -> None:
    """run(unit) -> name for every unit, n_workers at a time (numpy releases the GIL in the
    counting and sorting); finished(name) in this thread as each completes. On the first error
    the units not yet started are cancelled, the running ones end and are recorded, and the
    error is raised: a resumed build redoes only what did not finish."""
    if n_workers == 1 or len(units) <= 1:
        for u in units:
            finished(run(u))
        return
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    error: BaseException | None = None
    with ThreadPoolExecutor(n_workers, thread_name_prefix="actdb-index") as ex:
        todo = {ex.submit(run, u) for u in units}
        try:
            while todo:
                # each unit is recorded as it ends (FIRST_EXCEPTION waited for all of them, so a
                # killed build had recorded nothing and the progress bar stood still)
                ready, todo = wait(todo, return_when=FIRST_COMPLETED)
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


def build_unit(st, tok: TokenArrays, root: Path, unit: tuple[int, int, int], ngram: bool, config: IndexConfig,
               vocab: np.ndarray, device: str = "cpu") -> str:
    """Count one (layer, neuron chunk) unit (on `device`, count.count_unit) and write its parts to
    index/_parts/UNIT/; returns its name. Called in a thread of the build, or in a Ray task
    (ray_index.py, on the worker's CPU)."""
    layer, n0, n1 = unit
    counts = count_unit(st.packed(layer), tok, n0, n1, ngram, st.manifest.block_tokens, device)
    tables = unit_tables(layer, n0, counts, tok, ngram, config, vocab)
    del counts
    name = _unit_name(layer, n0)
    # a unit's folder appears whole or not at all (a resumed build trusts what it finds)
    d, tmpd = root / INDEX_PARTS / name, root / INDEX_PARTS / f".{name}.tmp"
    shutil.rmtree(tmpd, ignore_errors=True)
    tmpd.mkdir()
    for tname, t in tables.items():
        pq.write_table(t, tmpd / f"{tname}.parquet", **_PART_OPTIONS)
    shutil.rmtree(d, ignore_errors=True)
    tmpd.rename(d)
    fault_point("unit-done", name)
    return name


def _unit_name(layer: int, n0: int) -> str:
    return f"l{layer:04d}_n{n0:07d}"


def _assemble(root: Path, names: list[str], tok: TokenArrays) -> dict[str, dict[str, Any]]:
    """Concatenate the units' parts (in layer, neuron order) and write the global counts;
    returns {file: digest} of everything written."""
    files = {}
    missing = [n for n in names if not (root / INDEX_PARTS / n).is_dir()]
    if missing:   # recorded as done but not there: a state that does not match the parts
        raise StoreError(f"{root / INDEX_PARTS / missing[0]}: missing, although {root / STATE} records it as done; "
                         f"run `actdb index` again with --force")
    for t in TABLES:
        out = root / f"{t}.parquet"
        with atomic_path(out) as tmp:
            writer, pending, n_pending = None, [], 0
            for name in names:
                p = root / INDEX_PARTS / name / f"{t}.parquet"
                if not p.exists():   # the n-gram tables exist for n-gram layers only
                    continue
                try:   # the parts were written with page checksums: a damaged one is not assembled
                    part = pq.read_table(p, page_checksum_verification=True)
                except (OSError, pa.ArrowException) as e:
                    raise StoreError(f"{p}: unreadable part of the build ({e}); run `actdb index` again with "
                                     "--force") from None
                if writer is None:
                    writer = pq.ParquetWriter(tmp, part.schema, **PARQUET_OPTIONS)
                pending.append(part)
                n_pending += part.num_rows
                if n_pending >= ROW_GROUP:   # fixed-size row groups: the file does not depend on the chunking
                    whole = pa.concat_tables(pending)
                    cut = n_pending - n_pending % ROW_GROUP
                    writer.write_table(whole.slice(0, cut), row_group_size=ROW_GROUP)
                    pending, n_pending = [whole.slice(cut)], n_pending - cut
            if writer is None:
                pq.write_table(EMPTY_SCHEMAS[t].empty_table(), tmp, **PARQUET_OPTIONS)
            else:
                if n_pending:
                    writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP)
                writer.close()
        files[out.name] = file_digest(out)
    counts = {"position_counts": pa.table({"pos": np.arange(tok.T, dtype=np.int32), "n": tok.pos_n.astype(np.int64),
                                           "n_full": tok.pos_full_n.astype(np.int64)})}
    ngram = any((root / INDEX_PARTS / n / "neuron_bigrams.parquet").exists() for n in names)
    for name, col, n in NGRAMS:
        keep = n == 1 or ngram   # bigram/trigram counts only with n-gram layers, like their tables
        u = tok.uniq[name] if keep else np.zeros(0, np.int64)
        counts[f"{name}_counts"] = pa.table({col: u.astype(np.int32 if n == 1 else np.int64),
                                             "count": tok.counts[name] if keep else np.zeros(0, np.int64)})
    for t, table in counts.items():
        write_parquet(table, root / f"{t}.parquet")
        files[f"{t}.parquet"] = file_digest(root / f"{t}.parquet")
    return files
