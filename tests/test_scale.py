"""What a saved query or an explorer page reads must not grow with the store's tokens
(docs/query.md, docs/explorer.md): each test counts what is read, never how long it takes."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import actdb
from actdb.errors import InputError
from actdb.query.catalogue import saved_queries
from actdb.query.connection import connect
from actdb.query.dependencies import files_read
from actdb.store.index_info import IndexInfo, index_path, read_index_info
from actdb.store.layout import INDEX_CAPTURE_DIR, INDEX_CAPTURE_LAYERS, INDEX_MASSIVE

# the queries across models too: on one store their union views are that store's
MASSIVE = ("massive_top_magnitudes", "massive_sites", "massive_by_layer", "across_massive", "across_massive_by_depth")
BY_SOURCE = ("massive_top_magnitudes", "across_massive_by_depth")   # no thresholds: the per-layer summary only


def _scans(plan: list) -> list[int]:
    """The estimated rows of every Parquet scan of an EXPLAIN (FORMAT JSON) plan: a file's row count."""
    out = []
    for node in plan:
        if node["name"] == "READ_PARQUET":
            out.append(int(node["extra_info"]["Estimated Cardinality"]))
        out += _scans(node["children"])
    return out


def _plan(st, name: str, params: dict) -> list[int]:
    q = {q.name: q for q in saved_queries()}[name]
    if q.across:   # the unions of the store alone, as Store.query runs them
        from actdb.query.across import alone

        several = alone(st)
        con = several._db()
        several._views.ensure(q.sql)   # the unions it names, made as a statement makes them
    else:
        con = connect(st, lazy=False)
    return _scans(json.loads(con.execute("EXPLAIN (FORMAT JSON) " + q.sql, params).fetchall()[0][1]))


@pytest.mark.parametrize("name", MASSIVE)
def test_massive_queries_read_no_table_with_a_row_per_token(name, known_store):
    """At the recorded thresholds the plan scans the index's small tables (capture_layers,
    massive.parquet, the vocabulary), never the capture Parquet (a row per token, layer and rank)
    nor the token parts: DuckDB folds the macro's other branch away."""
    st = known_store
    c = read_index_info(st.path).config
    params = {"source": "resid"} if name in BY_SOURCE else {"abs_min": c.abs_min, "ratio": c.ratio}
    scans = _plan(st, name, params)
    assert scans and max(scans) < st.n_tokens, f"{name}: scans of {scans} rows, the store has {st.n_tokens} tokens"
    if name not in BY_SOURCE:
        # looser thresholds than the recorded ones need the capture: it is read, and answers
        loose = _plan(st, name, {"abs_min": 1.0, "ratio": 1.0})
        assert max(loose) >= st.n_tokens
        if name == "across_massive":   # a row per store: its count of massive activations grows
            assert st.query(name, {"abs_min": 1.0, "ratio": 1.0})["n_massive"][0] > st.query(name)["n_massive"][0]
        else:
            assert st.query(name, {"abs_min": 1.0, "ratio": 1.0}).height > st.query(name).height


def test_massive_top_magnitudes_checks_no_capture_part(known_store):
    """Its file checks (sha256 of each Parquet file a statement reads) cover capture_layers only."""
    st = known_store
    q = {q.name: q for q in saved_queries()}["massive_top_magnitudes"]
    connect(st)
    files = files_read(q.sql, st._view_deps)
    assert files and all(INDEX_CAPTURE_LAYERS in f for f in files), files


def test_index_without_massive_summaries_says_so_in_one_line(known_store, tmp_path):
    """An index from before capture_layers / massive.parquet: massive_activations still answers
    (from the capture Parquet), and a query of capture_layers is told to rebuild, in one line."""
    root = tmp_path / "store"
    shutil.copytree(known_store.path, root)
    info = read_index_info(root)
    for rel in (INDEX_CAPTURE_LAYERS, INDEX_MASSIVE):
        (index_path(root) / rel).unlink()
    IndexInfo(config=info.config, files={k: v for k, v in info.files.items()
                                         if k not in (INDEX_CAPTURE_LAYERS, INDEX_MASSIVE)}).write(index_path(root))
    old = actdb.open(root)
    assert old.sql("SELECT count(*) AS n FROM massive_activations")["n"][0] == \
        known_store.sql("SELECT count(*) AS n FROM massive_activations")["n"][0] > 0
    with pytest.raises(InputError) as e:
        old.query("massive_top_magnitudes")
    assert "rebuild it with `actdb index STORE --force`" in str(e.value) and "\n" not in str(e.value)
    assert any(k.startswith(INDEX_CAPTURE_DIR + "/") for k in info.files)


def _telling_reference(mask: np.ndarray, ids: np.ndarray, seq: np.ndarray, scanned: int, window: int) -> list[int]:
    """Fire rows among the first `scanned` in most-telling order, by a full sort (numpy)."""
    rows = np.flatnonzero(mask[:scanned])
    fires = np.bincount(ids[:scanned][mask[:scanned]], minlength=ids.max() + 1)
    counts = np.bincount(ids[:scanned], minlength=ids.max() + 1)
    p = fires[ids[rows]] / counts[ids[rows]]
    dens = [sum(mask[x] for x in range(max(0, r - window), min(len(mask), r + window + 1)) if seq[x] == seq[r])
            for r in rows]
    return rows[np.lexsort((rows, -np.array(dens), -p))].tolist()


def test_contexts_read_a_bounded_number_of_rows(known_store, monkeypatch):
    """A contexts page reads the mask over the first SCAN_ROWS rows (+ a window), however large the
    store; its most telling contexts are those of a full sort over those rows, and later pages
    sample the other fires among them, never repeating one."""
    from actdb.explore import contexts as ctx
    from actdb.store.reader import StoreReader

    st, window, per_page = known_store, 3, 4
    scanned = st.n_tokens // 3
    monkeypatch.setattr(ctx, "SCAN_ROWS", scanned)
    read = []
    real = StoreReader.neuron

    def counted(self, layer, neuron, start=0, stop=None):
        out = real(self, layer, neuron, start, stop)
        read.append(len(out))
        return out
    monkeypatch.setattr(StoreReader, "neuron", counted)
    t = st.tokens().sort("row")
    ids, seq = t["token_id"].to_numpy().astype(np.int64), t["seq"].to_numpy()
    mask = real(st, 0, 2)
    want = _telling_reference(mask, ids, seq, scanned, window)
    from actdb.explore.explorer import Explorer

    ex = Explorer(st)
    page = ctx.contexts(ex, 0, 2, per_page=per_page, window=window)
    assert read and max(read) <= scanned + window < st.n_tokens
    # the token arrays the explorer keeps are of those rows too (a server's memory, flat in tokens)
    held = [v for k, v in ex._cache.items() if isinstance(k, tuple) and k[0] == "arrays"]
    assert held and max(len(a.ids) for a in held) == scanned + window
    assert page.scanned_rows == scanned and page.n_fire_rows == int(mask[:scanned].sum())
    assert [c.row for c in page.contexts] == want[:per_page]
    seen = {c.row for c in page.contexts}
    for k in range(2, page.contexts_pages + 1):
        rows = [c.row for c in ctx.contexts(st, 0, 2, page=k, per_page=per_page, window=window).contexts]
        assert all(r < scanned and mask[r] for r in rows) and not seen & set(rows)
        seen |= set(rows)
    assert seen == set(np.flatnonzero(mask[:scanned]).tolist())
