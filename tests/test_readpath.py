"""The read path: user SQL confined to the store, statement
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
from actdb.query.catalogue import Recorded, describe_lines, saved_queries
from actdb.errors import QueryTimeout
from stores import make_known

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


@pytest.mark.slow
def test_links_in_a_store_lead_nowhere(probe_store, tmp_path):
    """Symbolic links put into a store (actdb writes none): a link to a file outside is refused
    like the file itself, and so is a Parquet link where a view's glob looks; a link back up the
    tree (a loop) does not send the file checks into an endless walk."""
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(probe_store.path, copy)   # an ingested store: its write-time records name every file
    (tmp_path / "secret.csv").write_text("secret\n42\n")
    (copy / "tokens" / "secret.csv").symlink_to(tmp_path / "secret.csv")
    (copy / "tokens" / "up").symlink_to(tmp_path)                         # a loop: up/store/tokens/up/...

    def sql(q: str) -> subprocess.CompletedProcess:   # a process, with a timeout: a regression hangs
        return subprocess.run([sys.executable, "-m", "actdb.cli", "sql", str(copy), q], capture_output=True,
                              text=True, timeout=120)

    for q in (f"SELECT * FROM read_csv('{copy}/tokens/secret.csv')", f"SELECT * FROM read_csv('{copy}/tokens/up/secret.csv')"):
        r = sql(q)
        assert r.returncode == 1 and "Permission Error" in r.stderr and r.stderr.count("\n") == 1, (q, r.stderr)
    assert sql("SELECT count(*) AS n FROM tokens").returncode == 0
    pl.DataFrame({"secret": [42]}).write_parquet(tmp_path / "secret.parquet")
    (copy / "tokens" / "zz.parquet").symlink_to(tmp_path / "secret.parquet")
    r = sql(f"SELECT * FROM read_parquet('{copy}/tokens/*.parquet')")
    # DuckDB refuses the link's target; where the store has its write-time records, the file
    # checks name the link first
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "zz.parquet" in r.stderr, r.stderr
    assert "Permission Error" in r.stderr or "a symbolic link where actdb writes only files" in r.stderr, r.stderr
    assert "42" not in r.stdout


def test_a_view_the_store_lacks_says_why(store):
    """The known store has no projection weights: naming a vocabulary-projection view or macro
    says so in one line (CLI and library), where DuckDB says only that no such table exists;
    a name that is no view at all keeps DuckDB's message."""
    st = actdb.open(store)
    for sql in ("SELECT * FROM vocab_projection", "SELECT count(*) FROM detector_suppression_at(max_cov := 3)"):
        with pytest.raises(actdb.InputError, match=r"^(vocab_projection|detector_suppression_at): this store has "
                                                   r"no vocabulary projection \(.*projection.safetensors"):
            st.sql(sql)
    out = one_line_error(run("sql", store, "SELECT * FROM detector_suppression"))
    assert out.startswith("Error: detector_suppression: this store has no vocabulary projection"), out
    with pytest.raises(actdb.InputError, match="Catalog Error: Table with name no_such_view does not exist"):
        st.sql("SELECT * FROM no_such_view")


def test_relative_store_path_is_confined_too(store, monkeypatch):
    monkeypatch.chdir(store.parent)
    st = actdb.open(store.name)
    assert st.sql("SELECT count(*) AS n FROM neurons")["n"][0] == 3 * 16
    with pytest.raises(actdb.InputError, match="Permission Error"):
        st.sql("SELECT * FROM read_text('/etc/passwd')")


@pytest.mark.slow
def test_proj_score_udf_still_works(tmp_path):
    import refs_projection_massive

    p = make_known(tmp_path / "s")
    refs_projection_massive.plant(p, actdb.open(p).tokens().sort("row")["pos"].to_numpy())
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


@pytest.mark.slow
def test_file_checks_count_against_the_time_limit(tmp_path):
    """The sha256 checks of a statement's files run within its time limit: past it, one line
    says so (no statement started), and the next statement with time enough answers."""
    p = make_known(tmp_path / "s")
    build_index(p, progress=False)
    st = actdb.open(p)
    with pytest.raises(QueryTimeout, match=r"^query stopped after 1e-09 s \(timeout\) while checking the store's "
                                           r"files against their records \(0 checked; `actdb check .*` checks them all"):
        st.sql("SELECT count(*) AS n FROM neurons", timeout=1e-9)
    assert st.sql("SELECT count(*) AS n FROM neurons", timeout=30)["n"][0] > 0
    out = one_line_error(run("sql", p, "SELECT count(*) FROM neurons", "--timeout", "0.000000001"))
    assert out.startswith("Error: query stopped after 1e-09 s (--timeout) while checking the store's files"), out


def test_param_help_kept_and_shown():
    qs = {q.name: q for q in saved_queries()}
    for q in qs.values():
        for k in q.params:
            assert q.param_help.get(k), f"{q.name}: ${k} has no help text"
    q = qs["token_detectors_per_layer"]
    assert q.params["max_cov"] == Recorded("tok_max_cov") and \
        q.param_help["max_cov"] == "at most this many tokens cover the neuron"
    r = run("query", "--list")
    assert r.exit_code == 0 and "at most this many tokens cover the neuron" in r.output
    r = run("query", "token_detectors_per_layer", "--describe")
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == describe_lines("token_detectors_per_layer")
    for want in (q.title, q.reproduces, "$max_cov = index_info.tok_max_cov", "$p_share = index_info.p_share",
                 "share of fires the covered tokens", "the threshold NAME the store's index was built with"):
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


# `actdb ARGS` that prints "statement running" once the statement runs under the watchdog
# (connection._Watchdog, entered just before DuckDB executes it): from then on a SIGINT is the
# user's Ctrl-C of a running statement, wherever the process is, never one in its imports
_ANNOUNCED = """import sys
from actdb.query import connection
enter = connection._Watchdog.__enter__
def announced(self):
    out = enter(self)
    print("statement running", flush=True)
    return out
connection._Watchdog.__enter__ = announced
from actdb.cli import main
sys.argv[0] = "actdb"
main()
"""


def _cli(*args) -> list[str]:
    return [sys.executable, "-c", _ANNOUNCED, *map(str, args)]


@pytest.mark.slow
@pytest.mark.parametrize("sql", [SLOW, "SELECT i FROM range(100000000000) t(i)"], ids=["blocking", "streaming"])
def test_ctrl_c_prints_interrupted(store, tmp_path, sql):
    out = tmp_path / "x.csv"
    # a shell started in the background ignores SIGINT, and a child inherits that: restore it
    p = subprocess.Popen(_cli("sql", store, sql, "-f", "csv", "-o", out), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert p.stdout.readline() == "statement running\n"   # waits for it, however long it takes
    assert p.poll() is None, p.communicate()[0]
    t0 = time.perf_counter()
    p.send_signal(signal.SIGINT)
    text, _ = p.communicate(timeout=50)
    assert text == "Error: interrupted\n" and p.returncode == 130
    assert time.perf_counter() - t0 < 45      # the statement was stopped, not left to its 60 s limit
    assert list(tmp_path.iterdir()) == []      # no partial output file


def _peak_rss_kb(store: Path, sql: str, out: Path, fmt: str) -> int:
    code = ("import resource, sys\nfrom actdb.cli import main\n"
            "try:\n    main(sys.argv[1:], standalone_mode=False)\n"
            "finally:\n    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", code, "sql", str(store), sql, "-f", fmt, "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return int(r.stderr.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["csv", "parquet", "json"])
def test_large_answers_stream_in_bounded_memory(store, tmp_path, fmt):
    n = 10_000_000
    base = _peak_rss_kb(store, "SELECT 1 AS i, 2 AS j", tmp_path / "one", fmt)
    peak = _peak_rss_kb(store, f"SELECT i, i * 2 AS j FROM range({n}) t(i)", tmp_path / "big", fmt)
    materialised_kb = n * 16 / 1024                  # the two BIGINT columns alone, as Arrow
    assert peak - base < materialised_kb / 2, (base, peak)
    if fmt == "csv":
        with open(tmp_path / "big") as f:
            assert f.readline() == "i,j\n" and f.readline() == "0,0\n"
        assert (tmp_path / "big").stat().st_size > n * 8
    elif fmt == "parquet":
        assert pl.scan_parquet(tmp_path / "big").select(pl.len()).collect().item() == n


def test_table_output_stops_at_max_rows(store):
    r = run("sql", store, "SELECT i FROM range(5000) t(i)", "--max-rows", "10")
    assert r.exit_code == 0, r.output
    assert "4,990 more rows left out" in r.output and "│ 9 " in r.output and "│ 10 " not in r.output
    r = run("sql", store, "SELECT i FROM range(5000) t(i)")
    assert "4,000 more rows left out" in r.output
    r = run("sql", store, "SELECT i FROM range(5) t(i)")
    assert r.exit_code == 0 and "left out" not in r.output and "│ 4 " in r.output
    r = run("sql", store, "SELECT i FROM range(0) t(i)")
    assert r.exit_code == 0 and "i" in r.output


def test_streamed_formats_match_the_whole_answer(store, tmp_path):
    st = actdb.open(store)
    q = "SELECT layer, neuron, token_ids, fires FROM neuron_bigrams ORDER BY layer, neuron, fires DESC, ngram"
    want = st.sql(q)
    assert want.height > 10
    # several record batches: the stream is cut at batch boundaries, the answer is the same
    with st.stream(q) as answer:
        assert sum(b.num_rows for b in answer) == want.height
    r = run("sql", store, q, "-f", "json")
    assert r.exit_code == 0 and json.loads(r.output) == want.to_dicts()
    r = run("sql", store, q, "-f", "csv")
    lines = r.output.splitlines()
    assert lines[0] == "layer,neuron,token_ids,fires" and len(lines) == want.height + 1
    assert lines[1].split(",")[2] == " ".join(map(str, want["token_ids"][0]))
    r = run("sql", store, "SELECT 1 AS x WHERE false", "-f", "json")
    assert r.exit_code == 0 and json.loads(r.output) == []
    r = run("sql", store, "SELECT 1 AS x WHERE false", "-f", "csv")
    assert r.exit_code == 0 and r.output == "x\n"


_PROBE = """import sys
from actdb.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
except SystemExit:
    pass
print(sorted({m.split('.')[0] for m in sys.modules}), file=sys.stderr)
"""


@pytest.mark.slow
@pytest.mark.parametrize("args", [
    [], ["sql", "{s}", "SELECT count(*) FROM neurons"], ["sql", "{s}", "SELECT * FROM layer_stats", "-f", "csv"],
    ["query", "{s}", "dead_per_layer"], ["query", "--list"], ["info", "{s}"], ["check", "{s}"],
    ["neuron", "{s}", "0", "1"]], ids=lambda a: " ".join(a[:1]) or "import")
def test_read_path_imports_no_torch(store, args):
    code = "import actdb, sys; print(sorted({m.split('.')[0] for m in sys.modules}), file=sys.stderr)" \
        if not args else _PROBE
    r = subprocess.run([sys.executable, "-c", code, *[a.format(s=store) for a in args]], capture_output=True,
                       text=True, timeout=300, cwd=store.parent)
    loaded = eval(r.stderr.strip().splitlines()[-1])  # the probe's own last line: a list of names
    assert "torch" not in loaded and "transformers" not in loaded, (args, r.stderr[-500:])
    assert "actdb" in loaded
    if args[:1] == ["sql"] and "-f" not in args:
        # the table format of a one-line query needs DuckDB and nothing heavy (benchmarks/RESULTS.md)
        assert not {"polars", "pyarrow", "numpy", "matplotlib", "zarr", "tqdm"} & set(loaded), loaded


@pytest.mark.slow
def test_views_are_made_when_a_statement_names_them(tmp_path):
    """A one-line query binds only the views it names (and those they use); the rest, and
    proj_score, come when a later statement names them, with the confinement already locked."""
    import refs_projection_massive

    p = make_known(tmp_path / "s")
    refs_projection_massive.plant(p, actdb.open(p).tokens().sort("row")["pos"].to_numpy())
    build_index(p, progress=False)
    code = ("import sys, actdb\nst = actdb.open(sys.argv[1])\n"
            "print(st.sql('SELECT count(*) AS n FROM layer_stats')['n'][0])\n"
            "print(sorted(st._lazy_views[st._db()].done))\nprint(st._lazy_views[st._db()].proj_score)\n"
            "print(st.query('detector_suppression_share').height > 0, st._lazy_views[st._db()].proj_score)\n"
            "print(len(st.views()))\n")
    out = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    n, done, first, later, n_views = out.stdout.splitlines()
    assert n == "3"
    assert done == "['layer_stats', 'neurons']"
    assert first == "False"        # no Python UDF made (DuckDB imports numpy to make one)
    assert later == "True True"
    st = actdb.open(p)
    assert int(n_views) == len(st.views()) and {"vocab_projection", "detector_suppression",
                                                 "massive_activations", "coverage"} <= st.views()
    with pytest.raises(actdb.InputError, match="Permission Error"):
        st.sql("SELECT * FROM vocab_projection, read_text('/etc/passwd')")


# Patches Polars' writer, when the CLI first imports Polars, to record which C-level SIGINT
# handler is installed each time it writes a batch, then to send this process a SIGINT.
_SIGINT_IN_WRITER = """import ctypes, importlib.abc, importlib.util, os, signal, sys
class Sigaction(ctypes.Structure):
    _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_ulong * 16), ("flags", ctypes.c_int),
                ("restorer", ctypes.c_void_p)]
def c_handler():
    sa = Sigaction()
    ctypes.CDLL(None).sigaction(signal.SIGINT, None, ctypes.byref(sa))
    return sa.handler
signal.signal(signal.SIGINT, signal.default_int_handler)
PYTHON = c_handler()   # CPython's own C handler, which runs the Python-level ones
WRITER = {"csv": "write_csv", "json": "write_json"}[sys.argv[1]]
class Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "polars":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("polars")
        run = spec.loader.exec_module
        def exec_module(module):
            run(module)
            orig = getattr(module.DataFrame, WRITER)
            def writer(self, *a, **k):
                print("python's" if c_handler() == PYTHON else "polars'", file=sys.stderr)
                os.kill(os.getpid(), signal.SIGINT)
                return orig(self, *a, **k)
            setattr(module.DataFrame, WRITER, writer)
        spec.loader.exec_module = exec_module
        return spec
sys.meta_path.insert(0, Hook())
from actdb.cli import main
main(["sql", sys.argv[2], "SELECT i FROM range(100000000000) t(i)", "-f", sys.argv[1], "-o", sys.argv[3]])
"""


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_ctrl_c_while_polars_writes_goes_to_the_watchdog(store, tmp_path, fmt):
    """Polars sets a C-level SIGINT handler of its own when first imported: had that come after
    the watchdog's, a Ctrl-C while Polars writes a batch would reach Polars, which can abort
    the process with a Rust panic (seen in its CSV writer). The CLI imports Polars before the
    statement starts, so the watchdog's handler is the one installed while Polars writes."""
    out = tmp_path / f"x.{fmt}"
    p = subprocess.run([sys.executable, "-c", _SIGINT_IN_WRITER, fmt, str(store), str(out)], capture_output=True,
                       text=True, timeout=120, cwd=tmp_path, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = (p.stdout + p.stderr).splitlines()
    assert lines and lines[0] == "python's", lines[:20]
    assert lines[-1] == "Error: interrupted" and p.returncode == 130, lines[-20:]
    assert not out.exists()
