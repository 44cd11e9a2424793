"""What a saved query or an explorer page reads must not grow with the store's tokens
(docs/query.md, docs/explorer.md): each test counts what is read, never how long it takes."""
from __future__ import annotations

import json
import shutil

import pytest

import actdb
from actdb.errors import InputError
from actdb.query.catalogue import saved_queries
from actdb.query.connection import connect
from actdb.query.dependencies import files_read
from actdb.store.index_info import IndexInfo, index_path, read_index_info
from actdb.store.layout import INDEX_CAPTURE_DIR, INDEX_CAPTURE_LAYERS, INDEX_MASSIVE

MASSIVE = ("massive_top_magnitudes", "massive_sites", "massive_by_layer")


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
    con = connect(st, lazy=False)
    return _scans(json.loads(con.execute("EXPLAIN (FORMAT JSON) " + q.sql, params).fetchall()[0][1]))


@pytest.mark.parametrize("name", MASSIVE)
def test_massive_queries_read_no_table_with_a_row_per_token(name, known_store):
    """At the recorded thresholds the plan scans the index's small tables (capture_layers,
    massive.parquet, the vocabulary), never the capture Parquet (a row per token, layer and rank)
    nor the token parts: DuckDB folds the macro's other branch away."""
    st = known_store
    c = read_index_info(st.path).config
    params = {"source": "resid"} if name == "massive_top_magnitudes" else {"abs_min": c.abs_min, "ratio": c.ratio}
    scans = _plan(st, name, params)
    assert scans and max(scans) < st.n_tokens, f"{name}: scans of {scans} rows, the store has {st.n_tokens} tokens"
    if name != "massive_top_magnitudes":
        # looser thresholds than the recorded ones need the capture: it is read, and answers
        loose = _plan(st, name, {"abs_min": 1.0, "ratio": 1.0})
        assert max(loose) >= st.n_tokens
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
