"""Issue 13 (3-5, 7) and 18 (6-8, the query part): user SQL confined to the store, statement
time limits, streamed output with bounded memory, Ctrl-C, saved-query parameter help,
query -o errors, and no torch on the read path."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

import actdb
from actdb.cli import main
from actdb.index.build import build_index
from actdb.query.catalogue import describe_lines, saved_queries
from actdb.query.connection import QueryTimeout
from actdb.settings import query_settings_table
from test_index import make_known

ROOT = Path(__file__).resolve().parent.parent
SLOW = "SELECT count(*) AS n FROM range(1000000000) a, range(1000000) b"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    p = make_known(tmp_path_factory.mktemp("readpath") / "store")
    build_index(p, progress=False)
    return p


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(r) -> str:
    assert r.exit_code != 0, r.output
    assert r.output.startswith("Error: ") and r.output.count("\n") == 1, r.output
    return r.output


def outside_reads(store: Path) -> list[str]:
    sibling = store.parent / (store.name + "-sibling")   # shares the store's name as a prefix
    sibling.mkdir(exist_ok=True)
    (sibling / "x.csv").write_text("a\n1\n")
    return ["SELECT * FROM read_text('/etc/passwd')",
            "SELECT * FROM glob('/*')",
            f"SELECT * FROM read_csv('{sibling / 'x.csv'}')",
            f"SELECT * FROM read_csv('{store}/../{sibling.name}/x.csv')",
            "SELECT * FROM read_csv('http://example.com/x.csv')",
            "SELECT * FROM read_parquet('https://example.com/x.parquet')",
            "SELECT * FROM read_parquet('s3://bucket/x.parquet')",
            "SELECT * FROM read_json('/etc/hostname')"]


def test_user_sql_reads_only_the_store(store):
    st = actdb.open(store)
    for sql in outside_reads(store):
        out = one_line_error(run("sql", store, sql))
        assert "Permission Error" in out and "store's own files" in out, (sql, out)
        with pytest.raises(actdb.InputError, match="Permission Error"):
            st.sql(sql)
        out = one_line_error(run("query", store, _sql_file(store.parent, sql)))
        assert "Permission Error" in out, (sql, out)
    # the store's own files stay readable, and so do the views and generated rows
    n = st.sql(f"SELECT count(*) AS n FROM read_parquet('{store}/tokens/*.parquet')")["n"][0]
    assert n == st.n_tokens
    assert st.sql("SELECT count(*) AS n FROM range(10)")["n"][0] == 10
    assert st.sql("SELECT count(*) AS n FROM neurons")["n"][0] == 3 * 16


def _sql_file(folder: Path, sql: str) -> Path:
    f = folder / f"q{abs(hash(sql))}.sql"
    f.write_text(f"-- title: outside\n{sql}\n")
    return f


def test_confinement_cannot_be_undone(store):
    st = actdb.open(store)
    for sql in ("SELECT set_config('enable_external_access', 'true')",
                "SELECT * FROM duckdb_settings() WHERE name = 'enable_external_access' AND value = 'true'"):
        try:
            assert st.sql(sql).height == 0, sql
        except actdb.InputError:
            pass
    with pytest.raises(actdb.InputError, match="Permission Error"):
        st.sql("SELECT * FROM read_text('/etc/passwd')")


def test_relative_store_path_is_confined_too(store, monkeypatch):
    monkeypatch.chdir(store.parent)
    st = actdb.open(store.name)
    assert st.sql("SELECT count(*) AS n FROM neurons")["n"][0] == 3 * 16
    with pytest.raises(actdb.InputError, match="Permission Error"):
        st.sql("SELECT * FROM read_text('/etc/passwd')")


def test_proj_score_udf_still_works(tmp_path):
    import issue4_refs

    p = make_known(tmp_path / "s")
    issue4_refs.plant(p, actdb.open(p).tokens().sort("row")["pos"].to_numpy())
    build_index(p, progress=False)
    st = actdb.open(p)
    s = st.sql("SELECT proj_score(0, 1, 3) AS s")["s"][0]
    assert s is not None and s == s
    assert st.query("detector_suppression_share").height > 0


def test_statement_timeout(store):
    st = actdb.open(store)
    t0 = time.perf_counter()
    with pytest.raises(QueryTimeout, match=r"query interrupted after 0.5 s \(timeout\)"):
        st.sql(SLOW, timeout=0.5)
    assert time.perf_counter() - t0 < 20
    # the connection answers the next statement, and a quick one is not cut
    assert st.sql("SELECT 1 AS x", timeout=5)["x"][0] == 1
    out = one_line_error(run("sql", store, SLOW, "--timeout", "0.5"))
    assert out == "Error: query interrupted after 0.5 s (--timeout)\n"
    f = _sql_file(store.parent, SLOW)
    assert one_line_error(run("query", store, f, "--timeout", "0.5")) == out
    assert "--timeout" in one_line_error(run("sql", store, "SELECT 1", "--timeout", "-1"))


def test_query_settings_table_in_readme():
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- query-settings-table -->") + len("<!-- query-settings-table -->")
    end = readme.index("<!-- /query-settings-table -->")
    assert readme[start:end].strip() == query_settings_table(), "regenerate with actdb.settings.query_settings_table()"


def test_param_help_kept_and_shown():
    qs = {q.name: q for q in saved_queries()}
    for q in qs.values():
        for k in q.params:
            assert q.param_help.get(k), f"{q.name}: ${k} has no help text"
    q = qs["token_detectors_per_layer"]
    assert q.params["max_cov"] == 5 and q.param_help["max_cov"] == "at most this many tokens cover the neuron"
    r = run("query", "--list")
    assert r.exit_code == 0 and "at most this many tokens cover the neuron" in r.output
    r = run("query", "token_detectors_per_layer", "--describe")
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == describe_lines("token_detectors_per_layer")
    for want in (q.title, q.reproduces, "$max_cov = 5", "$p_share = 0.95", "share of fires the covered tokens"):
        assert want in r.output, want
    assert "no such query" not in r.output
    assert "expected a .sql file or one of" in one_line_error(run("query", "nope", "--describe"))


def test_missing_query_file_is_named(store, tmp_path):
    out = one_line_error(run("query", store, tmp_path / "missing.sql"))
    assert "missing.sql: no such file" in out and "expected one of" not in out
    out = one_line_error(run("query", store, "missing.sql"))
    assert "missing.sql: no such file" in out
    assert "is not a file" in one_line_error(run("query", store, tmp_path))
    assert "dead_per_layer" in one_line_error(run("query", store, "no_such_query"))


def test_query_output_folder_and_missing_parent(store, tmp_path):
    out = one_line_error(run("query", store, "dead_per_layer", "-f", "csv", "-o", tmp_path))
    assert "is a folder" in out
    f = tmp_path / "new" / "deeper" / "dead.csv"
    r = run("query", store, "dead_per_layer", "-f", "csv", "-o", f)
    assert r.exit_code == 0, r.output
    assert f.read_text().splitlines()[0] == "layer,n_neurons,n_dead,dead_pct"
    r = run("sql", store, "SELECT 1 AS x", "-f", "parquet", "-o", tmp_path / "p" / "x.parquet")
    assert r.exit_code == 0 and pl.read_parquet(tmp_path / "p" / "x.parquet")["x"].to_list() == [1]
    assert list(tmp_path.rglob(".*.tmp")) == []
