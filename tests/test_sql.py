"""`actdb sql` / `actdb query` / Store.sql: read-only, parameters bound, one-line errors, formats."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

import actdb
from actdb.cli import main
from actdb.index.build import build_index
from stores import make_known


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    p = make_known(tmp_path_factory.mktemp("sql") / "store")
    build_index(p, progress=False)
    return p


def snapshot(root: Path) -> dict[str, str]:
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(root.rglob("*")) if f.is_file()}


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("stmt", [
    "UPDATE neurons SET fires = 0",
    "CREATE TABLE x AS SELECT 1",
    "COPY (SELECT * FROM neurons) TO '{root}/index/neuron_fires.parquet' (FORMAT parquet)",
    "COPY (SELECT 1) TO '{root}/x.csv'",
    "DROP VIEW neurons",
    "ATTACH '{root}/db.duckdb' AS x",
    "INSERT INTO neurons VALUES (0, 0, 0, 0, true)",
    "SET threads = 1",
    "SELECT 1; DROP VIEW neurons",
    "EXPLAIN ANALYZE COPY (SELECT 1) TO '{root}/y.csv'",
    "PRAGMA enable_profiling",
])
def test_writes_rejected_and_store_unchanged(store, stmt):
    before = snapshot(store)
    sql = stmt.format(root=store)
    r = run("sql", store, sql)
    assert r.exit_code != 0
    assert r.output.startswith("Error: ") and r.output.count("\n") == 1, r.output
    assert "read-only" in r.output or "one SQL statement" in r.output
    with pytest.raises(actdb.InputError):
        actdb.open(store).sql(sql)
    assert snapshot(store) == before
    # the views still answer afterwards
    assert actdb.open(store).sql("SELECT count(*) AS n FROM neurons")["n"][0] == 3 * 16


def test_parameters_are_bound_not_formatted(store):
    st = actdb.open(store)
    evil = "x'; DROP VIEW neurons; --"
    assert st.sql("SELECT $s AS s", {"s": evil})["s"][0] == evil
    df = st.sql("SELECT count(*) AS n FROM neurons WHERE layer = $layer AND fires > $f", {"layer": 0, "f": 10})
    direct = st.sql("SELECT count(*) AS n FROM neurons WHERE layer = 0 AND fires > 10")
    assert df["n"][0] == direct["n"][0]
    r = run("sql", store, "SELECT $s AS s, $n + 1 AS m", "-p", "s", evil, "-p", "n", "41", "-f", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == [{"s": evil, "m": 42}]
    with pytest.raises(actdb.InputError, match=r"\$n"):
        st.sql("SELECT $n")
    with pytest.raises(actdb.InputError, match="not used"):
        st.sql("SELECT 1", {"n": 1})


def test_sql_errors_one_line(store):
    for sql in ("SELEC 1", "SELECT * FROM no_such_view", "SELECT 1/'a'::INT"):
        r = run("sql", store, sql)
        assert r.exit_code != 0 and r.output.startswith("Error: ") and r.output.count("\n") == 1, r.output
    r = run("sql", store.parent / "missing", "SELECT 1")
    assert r.exit_code != 0 and "no such store" in r.output


def test_formats(store, tmp_path):
    q = "SELECT layer, n_dead FROM layer_stats ORDER BY layer"
    want = actdb.open(store).sql(q)
    r = run("sql", store, q, "-f", "csv")
    assert r.exit_code == 0 and r.output.splitlines()[0] == "layer,n_dead"
    assert [tuple(map(int, l.split(","))) for l in r.output.splitlines()[1:]] == want.rows()
    out = tmp_path / "x.parquet"
    r = run("sql", store, q, "-f", "parquet", "-o", out)
    assert r.exit_code == 0 and pl.read_parquet(out).rows() == want.rows()
    r = run("sql", store, q, "-f", "parquet")
    assert r.exit_code != 0 and "-o" in r.output
    r = run("sql", store, q)
    assert r.exit_code == 0 and "n_dead" in r.output


def test_query_command(store, tmp_path):
    r = run("query", "--list")
    assert r.exit_code == 0 and "dead_per_layer" in r.output and "Figure 1a" in r.output
    st = actdb.open(store)
    r = run("query", store, "token_detectors_per_layer", "-p", "max_cov", "12", "-f", "json")
    assert r.exit_code == 0, r.output
    want = st.query("token_detectors_per_layer", {"max_cov": 12})
    assert [(d["layer"], d["n_detectors"]) for d in json.loads(r.output)] == want.rows()
    f = tmp_path / "mine.sql"
    f.write_text("-- title: mine\n-- param: k = 2\nSELECT count(*) AS n FROM neurons WHERE layer = $k\n")
    r = run("query", store, f, "-f", "csv")
    assert r.exit_code == 0 and r.output.splitlines() == ["n", "16"]
    r = run("query", store, "no_such_query")
    assert r.exit_code != 0 and "dead_per_layer" in r.output
    r = run("query", store, "dead_per_layer", "-p", "zzz", "1")
    assert r.exit_code != 0 and "zzz" in r.output


def test_index_command_and_missing_index(tmp_path):
    p = make_known(tmp_path / "s")
    with pytest.raises(actdb.StoreError, match="actdb index"):
        actdb.open(p).sql("SELECT 1")
    r = run("index", p, "--layers", "0-1", "--no-progress")
    assert r.exit_code == 0, r.output
    assert actdb.open(p).sql("SELECT DISTINCT layer FROM neuron_bigrams ORDER BY 1").rows() == [(0,), (1,)]
    r = run("index", p, "--layers", "x")
    assert r.exit_code != 0 and "--layers" in r.output
