"""Edges a hostile run found: outputs aimed into a store, user files in actdb's folders, DuckDB's
temp folder, the server's hosts, memory and parameters, and every error as one line."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import actdb
from actdb.cli import main
from actdb.errors import InputError, StoreError
from actdb.store.record import seal
from records import rewrite_record

ACTDB = str(Path(sys.executable).with_name("actdb"))


def cli(*args) -> tuple[int, str]:
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in r.output and "internal error" not in r.output, r.output
    return r.exit_code, r.output.strip()


def error_line(out: str) -> str:
    lines = [l for l in out.splitlines() if l.startswith("Error:")]
    assert len(lines) == 1, out
    return lines[0]


def snapshot(d: Path) -> dict[str, bytes | None]:
    """Every path under d (folders as None) with its bytes: compared whole, nothing may change."""
    return {p.relative_to(d).as_posix(): (None if p.is_dir() else p.read_bytes()) for p in sorted(d.rglob("*"))}


# ---------------------------------------------------------------- outputs never go into a store

def test_outputs_inside_a_store_are_refused_and_nothing_is_written(tiny_store_copy, tmp_path):
    s = tiny_store_copy
    (tmp_path / "link").symlink_to(s / "index")
    before = snapshot(s)
    attempts = [
        ("sql", s, "SELECT 1 AS x", "-o", s / "manifest.json"),
        ("sql", s, "SELECT 1 AS x", "-f", "parquet", "-o", s / "index" / "x.parquet"),
        ("sql", s, "SELECT 1 AS x", "-o", tmp_path / "link" / "x.csv"),            # a link into it
        ("sql", s, "SELECT 1 AS x", "-o", s / "new" / ".." / "y.csv"),             # .. resolved
        ("query", s, "dead_per_layer", "-o", s / "masks" / "q.csv"),
        ("plot", s, "fig1a", "-o", s / ".." / s.name / "fig.png"),
        ("plot", s, "all", "-o", s / "figures"),
        ("report", s, "-o", s),                                                   # the store itself
        ("report", s, "-o", s / "report"),
    ]
    for args in attempts:
        code, out = cli(*args)
        line = error_line(out)
        assert code != 0 and "inside the actdb store" in line and "nothing was written" in line, (args, line)
        assert snapshot(s) == before, args
    code, out = cli("sql", s, "SELECT 1 AS x", "-f", "csv", "-o", tmp_path / "out" / "x.csv")   # outside: fine
    assert code == 0 and (tmp_path / "out" / "x.csv").read_text() == "x\n1\n", out


@pytest.mark.parametrize("marker", ["ingest-state.json", ".actdb.lock"])
def test_a_store_being_written_is_a_store_for_outputs(marker, tiny_store, tmp_path):
    d = tmp_path / "half"
    (d / "tokens").mkdir(parents=True)
    (d / marker).write_text("{}")
    code, out = cli("sql", tiny_store, "SELECT 1 AS x", "-o", d / "tokens" / "x.csv")
    assert code != 0 and f"(it holds {marker})" in error_line(out)
    assert sorted(p.name for p in d.rglob("*")) == sorted([marker, "tokens"])


# ---------------------------------------------------------------- only actdb's files are deleted

def test_every_file_actdb_writes_is_in_its_grammar(tiny_store):
    from actdb.store.layout import STORE_ENTRIES, foreign_file, is_actdb_file

    assert (tiny_store / "rules").is_dir() and (tiny_store / "capture").is_dir()
    assert foreign_file(tiny_store, [tiny_store / e for e in STORE_ENTRIES]) is None
    # what writes cut short leave, and an index build in progress
    for rel in ["tokens/.part-000003.parquet.4242.tmp", "masks/layer_01/c/0/0.0123456789abcdef0123456789abcdef.partial",
                "_staging/token_ids.i32", "_staging/seq_offsets.i64", "_checksums/block-000002.json",
                "index/_state.json", "index/_tmp/col_trigram.npy", "rules/top-0.9/_index_build/_parts/"
                ".l0001_n0000008.tmp/coverage.parquet", "index/.index.json.77.tmp", "capture/ffn_median/c/0/3"]:
        assert is_actdb_file(rel), rel
    for rel in ["index/notes.txt", "tokens/README.txt", "masks/layer_01/c/0/0/x", "index/_parts/mine.parquet",
                "rules/top-0.9/index/notes.md", "_staging/data.csv", "index/.notes.txt.swp"]:
        assert not is_actdb_file(rel), rel


@pytest.mark.slow
@pytest.mark.parametrize("where", ["index/notes.txt", "tokens/README.txt", "rules/top-0.9/index/x/y.txt"])
def test_overwrite_and_index_force_refuse_a_user_file_in_actdb_folders(where, tiny_store_copy, model_dirs,
                                                                      corpus_file):
    s = tiny_store_copy
    (s / where).parent.mkdir(parents=True, exist_ok=True)
    (s / where).write_text("mine, not actdb's")
    before = snapshot(s)
    commands = [("ingest", model_dirs("opt"), corpus_file, "-o", s, "--seq-len", "16", "--overwrite", "--no-progress")]
    if "/index/" in f"/{where}":   # a rebuild deletes the index's folders only
        commands.append(("index", s, "--force", "--no-progress"))
    for args in commands:
        code, out = cli(*args)
        line = error_line(out)
        assert code != 0 and f"{where}: not written by actdb; move it out and run again; nothing was changed" in line, \
            (args, line)
        assert snapshot(s) == before, args
    (s / where).unlink()
    code, out = cli(*commands[-1])
    assert code == 0, out


@pytest.mark.slow
def test_overwrite_of_a_half_written_store_still_works(tiny_store_copy, model_dirs, corpus_file):
    """What a killed ingest and index build leave is actdb's: --overwrite removes it."""
    s = tiny_store_copy
    (s / "manifest.json").unlink()
    (s / "ingest-state.json").write_text(seal({"format_version": 2, "identity": {}, "blocks_done": 1}))
    leftovers = ["tokens/.part-000001.parquet.4242.tmp", "masks/layer_00/c/0/0.0123456789abcdef0123456789abcdef.partial",
                 "index/_parts/.l0000_n0000000.tmp/coverage.parquet", "index/_tmp/col_pos.npy", "_staging/token_ids.i32"]
    for rel in leftovers:
        (s / rel).parent.mkdir(parents=True, exist_ok=True)
        (s / rel).write_bytes(b"cut short")
    code, out = cli("ingest", model_dirs("opt"), corpus_file, "-o", s, "--seq-len", "16", "--overwrite", "--no-progress")
    assert code == 0, out
    assert not any((s / rel).exists() for rel in leftovers)
    assert cli("check", s)[0] == 0


# ---------------------------------------------------------------- DuckDB's temp folder

def test_user_sql_cannot_read_duckdbs_temp_folder(tiny_store, tmp_path, monkeypatch):
    (tmp_path / ".tmp").mkdir()
    (tmp_path / ".tmp" / "secret.csv").write_text("a,b\n1,hunter2\n")
    monkeypatch.chdir(tmp_path)   # DuckDB's default temp folder is .tmp/ in the current folder
    code, out = cli("sql", tiny_store, "SELECT * FROM read_csv('.tmp/secret.csv')")
    assert code != 0 and "hunter2" not in out and "reads only the store's own files" in error_line(out)


def test_each_connection_has_a_private_temp_folder_removed_with_it(tiny_store):
    import gc

    from actdb.query.connection import connect

    con = connect(actdb.open(tiny_store))
    tmp = Path(con.execute("SELECT current_setting('temp_directory')").fetchone()[0])
    assert tmp.is_dir() and (tmp.stat().st_mode & 0o777) == 0o700 and tmp != Path(".tmp").absolute()
    del con
    gc.collect()
    assert not tmp.exists()


def test_a_killed_process_temp_folder_is_removed_by_the_next(tiny_store):
    """A process killed with its connection open leaves its private folder; the next process
    that opens a connection removes it, and never a live process's folder."""
    import signal

    from actdb.query.connection import connect, sweep_temp_dirs

    child = subprocess.Popen([sys.executable, "-c", "import sys, actdb\n"
                              "from actdb.query.connection import connect\n"
                              "con = connect(actdb.open(sys.argv[1]))\n"
                              "print(con.execute(\"SELECT current_setting('temp_directory')\").fetchone()[0], flush=True)\n"
                              "sys.stdin.read()", str(tiny_store)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    left = Path(child.stdout.readline().strip())
    con = connect(actdb.open(tiny_store))
    mine = Path(con.execute("SELECT current_setting('temp_directory')").fetchone()[0])
    assert left.is_dir() and str(child.pid) in left.name
    assert left not in sweep_temp_dirs() and left.is_dir()   # its process is alive
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert left.is_dir()                                       # SIGKILL ran no finalizer
    assert left in sweep_temp_dirs() and not left.exists()
    assert mine.is_dir()                                       # this process's own stays


# ---------------------------------------------------------------- the server

@pytest.fixture
def client_of():
    """client_of(store, **settings) -> (TestClient, store name); closed at the end."""
    from starlette.testclient import TestClient

    from actdb.serve.app import create_app, store_names
    from actdb.settings import ServeSettings

    made = []

    def make(store, **settings):
        st = actdb.open(store)
        c = TestClient(create_app([st], ServeSettings(**settings)), base_url="http://127.0.0.1",
                       raise_server_exceptions=False)
        made.append(c)
        return c, store_names([st])[0]
    yield make
    for c in made:
        c.close()


def test_only_loopback_and_host_names_are_answered(tiny_store, client_of):
    c, n = client_of(tiny_store)
    for host in ["127.0.0.1", "localhost:8000", "[::1]:8000", "127.0.0.1:8000"]:
        assert c.get(f"/api/s/{n}/layer/0", headers={"host": host}).status_code == 200, host
    for host in ["evil.example", "evil.example:8000", "10.1.2.3", "localhost.evil.example"]:
        r = c.get(f"/api/s/{n}/sql?q=SELECT+1", headers={"host": host})
        assert r.status_code == 400, host
    c, n = client_of(tiny_store, host="10.1.2.3")
    assert c.get(f"/api/s/{n}/layer/0", headers={"host": "10.1.2.3:8000"}).status_code == 200
    assert c.get(f"/api/s/{n}/layer/0", headers={"host": "evil.example"}).status_code == 400
    import socket

    c, n = client_of(tiny_store, host="0.0.0.0")   # every interface: this machine's name too
    assert c.get(f"/api/s/{n}/layer/0", headers={"host": f"{socket.gethostname()}:8000"}).status_code == 200
    assert c.get(f"/api/s/{n}/layer/0", headers={"host": "evil.example"}).status_code == 400


def test_a_console_query_past_the_memory_limit_is_a_4xx(tiny_store, client_of):
    c, n = client_of(tiny_store, memory_mb=64, timeout=60)
    big = "SELECT count(*) FROM (SELECT a.range AS x FROM range(3000000) a, range(30) b ORDER BY x DESC)"
    r = c.get(f"/api/s/{n}/sql", params={"q": big})
    assert r.status_code == 400, r.text
    assert r.json()["error"] == ("query stopped: it needs more memory than the query engine may use "
                                 "(--memory-mb 64 of actdb serve)")
    r = c.get(f"/s/{n}/sql", params={"q": big})
    assert r.status_code == 400 and "--memory-mb 64" in r.text
    assert c.get(f"/api/s/{n}/sql", params={"q": "SELECT 42 AS x"}).json()["rows"] == [[42]]   # it still answers


BIG = str(10**30)


@pytest.mark.parametrize("url, names", [
    ("/layer/0?page=" + BIG, "page"), ("/layer/0?page=x", "page"), ("/layer/0?sort=drop", "sort"),
    ("/layer/" + BIG, "layer"), ("/layer/x", "layer"), ("/layer/0?min_freq=x", "min_freq"),
    ("/layer/0?desc=maybe", "desc"), ("/layer/0?detector=x", "detector"),
    ("/neuron/0/" + BIG, "neuron"), ("/neuron/0/3?page=" + BIG, "page"), ("/neuron/0/3?page=-1", "page"),
    ("/neuron/" + BIG + "/3", "layer"), ("/token?id=" + BIG, "token id"), ("/token?id=x", "token id"),
    ("/doc/" + BIG, "document"), ("/doc/0?layer=0&neuron=" + BIG, "neuron"), ("/doc/0?layer=x&neuron=1", "layer"),
    ("/sql?saved=nosuch", "saved query"), ("/sql?q=SELECT+nosuch", "nosuch"), ("/sql?q=SELECT+$x", "$x"),
])
def test_every_bad_parameter_is_a_4xx_naming_it(url, names, tiny_store, client_of):
    c, n = client_of(tiny_store)
    for pre in ("/api", ""):
        r = c.get(f"{pre}/s/{n}{url}")
        assert 400 <= r.status_code < 500, (pre, url, r.status_code, r.text[:300])
        assert "Traceback" not in r.text and "internal error" not in r.text
    assert names in r.text and names in c.get(f"/api/s/{n}{url}").json()["error"]


def test_json_console_errors_use_http_statuses(tiny_store, client_of):
    c, n = client_of(tiny_store, timeout=1)
    r = c.get(f"/api/s/{n}/sql", params={"q": "SELECT nosuch"})
    assert r.status_code == 400 and "nosuch" in r.json()["error"] and not r.json()["rows"]
    r = c.get(f"/api/s/{n}/sql", params={"q": "SELECT count(*) FROM range(1000000000000) a WHERE hash(a.range) = 42"})
    assert r.status_code == 408 and r.json()["error"] == "query interrupted after 1 s (--timeout of actdb serve)"
    r = c.get(f"/api/s/{n}/sql.csv", params={"q": "SELECT nosuch"})
    assert r.status_code == 400
    r = c.get(f"/api/s/{n}/nosuch")
    assert r.status_code == 404 and r.json()["error"]


def test_a_store_file_gone_at_serve_time_is_a_503_naming_it(tiny_store_copy, client_of):
    c, n = client_of(tiny_store_copy)
    (tiny_store_copy / "docs.parquet").unlink()
    for url in [f"/s/{n}/doc/1", f"/api/s/{n}/doc/1", f"/api/s/{n}/sql?q=SELECT+*+FROM+docs"]:
        r = c.get(url)
        assert r.status_code == 503, (url, r.status_code, r.text[:300])
        assert f"{tiny_store_copy / 'docs.parquet'}: " in r.text and "Traceback" not in r.text, r.text[-500:]


# ---------------------------------------------------------------- one line for every error

def test_os_errors_are_one_line_naming_the_file(tiny_store, monkeypatch):
    import actdb.query.handle

    def denied(*a, **kw):
        raise PermissionError(13, "Permission denied", "/somewhere/manifest.json")
    monkeypatch.setattr(actdb.query.handle, "open", denied)
    code, out = cli("info", tiny_store)
    assert code != 0 and error_line(out) == "Error: /somewhere/manifest.json: Permission denied"


def test_a_full_disk_on_output_is_one_line_and_leaves_nothing(tiny_store, tmp_path, monkeypatch):
    import errno

    import actdb.query.output as output

    def full(answer, write):
        write("x\n")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(output, "_csv", full)
    out_dir = tmp_path / "o"
    code, out = cli("sql", tiny_store, "SELECT 1 AS x", "-f", "csv", "-o", out_dir / "x.csv")
    assert code != 0 and error_line(out) == f"Error: -o {out_dir / 'x.csv'}: cannot write it (No space left on device)"
    assert list(out_dir.iterdir()) == []


def test_report_into_an_existing_file_is_refused(tiny_store, tmp_path):
    f = tmp_path / "report.md"
    f.write_text("my report")
    code, out = cli("report", tiny_store, "-o", f)
    assert code != 0 and "is a file; expected a folder for the report" in error_line(out)
    assert f.read_text() == "my report"


def test_settings_refuse_non_finite_numbers_everywhere():
    from actdb.settings import IndexSettings, IngestSettings, QuerySettings, RaySettings, ServeSettings

    checked = 0
    for cls in (IngestSettings, IndexSettings, QuerySettings, RaySettings, ServeSettings):
        for f in dataclasses.fields(cls):
            if isinstance(f.default, float):
                for bad in (float("nan"), float("inf"), float("-inf")):
                    extra = {"ray": "auto"} if cls is RaySettings else {}
                    with pytest.raises(InputError, match=f"--{f.name.replace('_', '-')}: expected a finite number"):
                        cls(**{f.name: bad, **extra})
                checked += 1
    assert checked >= 8


@pytest.mark.parametrize("args, says", [
    (["--neuron-chunk", "0"], "--neuron-chunk: expected at least 1, got 0"),
    (["--zstd-level", "99"], "--zstd-level: expected -7..22, got 99"),
    (["--block-memory-mb", "nan"], "--block-memory-mb: expected a finite number, got nan"),
])
def test_bad_ingest_settings_are_one_line(args, says, model_dirs, corpus_file, tmp_path):
    code, out = cli("ingest", model_dirs("opt"), corpus_file, "-o", tmp_path / "s", *args)
    assert code != 0 and error_line(out) == f"Error: {says}"
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_no_time_limit_is_never_nan_or_inf(value, tiny_store):
    code, out = cli("sql", tiny_store, "SELECT 1", "--timeout", value)
    assert code != 0 and error_line(out) == f"Error: --timeout: expected a finite number, got {value}"


def test_a_closed_pipe_exits_quietly_with_141(tiny_store):
    p = subprocess.Popen([ACTDB, "sql", str(tiny_store), "SELECT * FROM range(2000000)", "-f", "csv"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.readline() == b"range\n"
    p.stdout.close()   # as `| head -1` does: the rest (megabytes) cannot be written
    err = p.stderr.read()
    assert p.wait(timeout=120) == 141 and err == b"", err


def test_a_fifo_for_a_metadata_file_is_refused_not_waited_on(tiny_store_copy):
    s = tiny_store_copy
    for name in ("manifest.json", "checksums.json"):
        saved = (s / name).read_bytes()
        (s / name).unlink()
        os.mkfifo(s / name)
        for cmd in ("info", "check"):
            r = subprocess.run([ACTDB, cmd, str(s)], capture_output=True, text=True, timeout=120)
            if name == "manifest.json" or cmd == "check":
                assert r.returncode != 0, (name, cmd, r.stdout)
                assert f"{s / name}: unreadable (expected a regular file, got a FIFO)" in r.stdout + r.stderr, (name, cmd)
            assert "Traceback" not in r.stderr
        (s / name).unlink()
        (s / name).write_bytes(saved)


def test_manifest_integers_have_bounds_and_the_checks_follow_the_files(tiny_store_copy):
    s = tiny_store_copy
    raw = json.loads((s / "manifest.json").read_text())
    # written checksum and all (a buggy writer), so the bounds below the checksum are what is tested
    rewrite_record(s / "manifest.json", lambda r: {**r, "n_tokens": 10**30})
    with pytest.raises(StoreError, match=r"n_tokens: expected 0 <= n_tokens < 2\*\*48, got 10{30}"):
        actdb.open(s)
    rewrite_record(s / "manifest.json", lambda r: {**r, "n_tokens": 2**47})   # in bounds, but no such parts
    n_parts, have = -(-2**47 // raw["block_tokens"]), len(list((s / "tokens").iterdir()))
    with pytest.raises(StoreError, match=f"expected {n_parts} token parts, got {have} \\(missing part-{have:06d}"):
        actdb.open(s)
    # `actdb check` too lists only what is there, in one process with a time limit
    r = subprocess.run([ACTDB, "check", str(s)], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and f"expected {n_parts} token parts, got {have}" in r.stdout, r.stdout + r.stderr


def test_a_full_disk_during_the_index_is_one_line_not_sigbus(tiny_store_copy, monkeypatch):
    """The index's memory-mapped token arrays reserve their disk space first: no room is an OSError
    there, where writing the mapped pages would have died of SIGBUS."""
    import errno

    calls = []

    def full(fd, offset, length):
        calls.append(length)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "posix_fallocate", full)
    code, out = cli("index", tiny_store_copy, "--force", "--no-progress")
    line = error_line(out)
    assert code != 0 and calls and "cannot write the index: No space left on device" in line, line
    assert "_tmp/col_" in line and ".npy" in line, line
    monkeypatch.undo()
    assert cli("index", tiny_store_copy, "--force", "--no-progress")[0] == 0   # and the rebuild goes on after


def test_a_ray_address_where_nothing_answers_is_refused_at_once(model_dirs, corpus_file, tmp_path):
    """A TCP connect with a time limit before ray.init, which waits minutes on a dead address."""
    import socket

    from actdb.cluster import check_reachable

    with socket.socket() as s:   # a port that was free a moment ago: nothing listens there now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(InputError, match=f"--ray 127.0.0.1:{port}: nothing answers at 127.0.0.1:{port}"):
        check_reachable(f"127.0.0.1:{port}")
    with pytest.raises(InputError, match="nothing answers"):
        check_reachable(f"ray://127.0.0.1:{port}")
    code, out = cli("ingest", model_dirs("opt"), corpus_file, "-o", tmp_path / "s", "--seq-len", "16",
                    "--ray", f"127.0.0.1:{port}", "--no-progress")
    assert code != 0 and "nothing answers" in error_line(out) and not (tmp_path / "s").exists()
    with socket.socket() as s:   # something listening: no refusal (Ray then speaks its protocol)
        s.bind(("127.0.0.1", 0))
        s.listen()
        check_reachable(f"127.0.0.1:{s.getsockname()[1]}")


@pytest.mark.slow
@pytest.mark.parametrize("bad", ['{"text": "the city"}\n{"text": "broken\n', '{"text": "the city"}\n{"body": "x"}\n'])
def test_a_failed_ingest_into_a_new_folder_leaves_nothing(bad, model_dirs, corpus_file, tmp_path):
    """A bad record found while tokenizing: what the ingest wrote goes (and the folder it made), so
    the rerun starts afresh instead of refusing an interrupted store with nothing to resume."""
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text(bad)
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "new" / "s", tmp_path / "empty"):
        code, msg = cli("ingest", model_dirs("opt"), corpus, "-o", out, "--seq-len", "16", "--no-progress")
        assert code != 0 and f"{corpus}:2" in error_line(msg) and "--resume" not in msg, msg
        assert list(out.iterdir()) == [] if out.name == "empty" else not out.exists()
        code, msg = cli("ingest", model_dirs("opt"), corpus_file, "-o", out, "--seq-len", "16", "--no-progress",
                        "--no-index")
        assert code == 0, msg
