"""`--overwrite` deletes only what actdb wrote, and one writer per store.

Every refusal is checked with decoy files compared byte for byte afterwards; the lock is
tested with real processes (a helper holding it, a slowed ingest, a SIGKILLed holder)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from actdb.cli import main
from actdb.errors import StoreError
from actdb.store.audit import check_store
from actdb.store.layout import LOCK_FILE, STORE_ENTRIES
from actdb.store.lock import writer_lock
from actdb.store.writer import check_target, is_store, remove_store
from tiny import make_corpus

ACTDB = str(Path(sys.executable).with_name("actdb"))
ARGS = ["--seq-len", "16", "--no-progress"]


def snapshot(d: Path) -> dict[str, bytes | None]:
    """Every path under d (folders as None) with its bytes: compared whole, nothing may change."""
    return {p.relative_to(d).as_posix(): (None if p.is_dir() else p.read_bytes()) for p in sorted(d.rglob("*"))}


def cli(*args) -> tuple[int, str]:
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in r.output, r.output
    return r.exit_code, r.output.strip()


def error_line(out: str) -> str:
    lines = [l for l in out.splitlines() if l.startswith("Error:")]
    assert len(lines) == 1, out
    return lines[0]


def ingest(model, corpus, out, *extra) -> tuple[int, str]:
    return cli("ingest", model, corpus, "-o", out, *ARGS, *extra)


@pytest.fixture(scope="module")
def store(model_dirs, corpus_file, tmp_path_factory) -> Path:
    """A complete store with its index, made once; tests copy it."""
    s = tmp_path_factory.mktemp("safety") / "store"
    code, out = ingest(model_dirs("opt"), corpus_file, s)
    assert code == 0, out
    return s


def copy_store(store: Path, to: Path) -> Path:
    shutil.copytree(store, to, symlinks=True)
    return to


# ---------------------------------------------------------------- 18.1 overwrite

def test_foreign_manifest_folder_is_not_a_store(model_dirs, corpus_file, tmp_path):
    """A web app's manifest.json does not make a folder a store: --overwrite refuses, deletes nothing."""
    app = tmp_path / "webapp"
    (app / "static").mkdir(parents=True)
    (app / "manifest.json").write_text(json.dumps({"name": "My App", "short_name": "app", "start_url": "/"}))
    (app / "index.html").write_text("<html>keep</html>")
    (app / "static" / "app.js").write_bytes(os.urandom(300))
    before = snapshot(app)
    assert not is_store(app)
    code, out = ingest(model_dirs("opt"), corpus_file, app, "--overwrite")
    line = error_line(out)
    assert code != 0 and "not an actdb store; refusing" in line and "'index.html'" in line, line
    assert "format_version" in line, "the line says why its manifest.json is not actdb's"
    assert snapshot(app) == before


def test_foreign_state_file_is_not_a_store(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "ingest-state.json").write_text('{"progress": 3}')
    assert not is_store(d)
    with pytest.raises(StoreError, match="not an actdb store"):
        check_target(d)


@pytest.mark.slow
def test_user_files_inside_a_store_are_kept_and_named(model_dirs, corpus_file, store, tmp_path):
    """STORE/my-figures/notes.txt: --overwrite refuses with one line naming it and deletes
    nothing; once it is moved out, --overwrite replaces the store."""
    s = copy_store(store, tmp_path / "s")
    (s / "my-figures").mkdir()
    (s / "my-figures" / "notes.txt").write_text("my notes, not actdb's")
    before = snapshot(s)
    for extra in (["--overwrite"], ["--resume"], []):
        code, out = ingest(model_dirs("opt"), corpus_file, s, *extra)
        line = error_line(out)
        assert code != 0 and "holds 'my-figures', which actdb did not write" in line, (extra, line)
        assert snapshot(s) == before, extra
    shutil.move(s / "my-figures", tmp_path / "my-figures")
    code, out = ingest(model_dirs("opt"), corpus_file, s, "--overwrite")
    assert code == 0, out
    assert cli("check", s)[0] == 0
    assert (tmp_path / "my-figures" / "notes.txt").read_text() == "my notes, not actdb's"


def test_remove_store_removes_the_layout_and_nothing_else(store, tmp_path):
    """Only STORE_ENTRIES (and their temporaries) go; the folder and a stale lock stay."""
    s = copy_store(store, tmp_path / "s")
    (s / LOCK_FILE).write_text("999999999 ingest\n")            # left by a killed writer
    (s / ".manifest.json.4242.tmp").write_text("cut short")      # an atomic write cut short
    (s / "docs.tmp.parquet").write_bytes(b"PAR1")
    assert is_store(s)
    remove_store(s)
    assert sorted(p.name for p in s.iterdir()) == [LOCK_FILE]
    assert LOCK_FILE in STORE_ENTRIES


def test_interrupted_removal_is_still_a_store(store, tmp_path, monkeypatch):
    """The manifest goes last: an --overwrite killed mid-removal leaves a folder that is
    still recognised as a store, so --overwrite can run again."""
    import actdb.store.writer as w

    s = copy_store(store, tmp_path / "s")
    real = shutil.rmtree
    calls = []

    def dies_on_second(p, *a, **k):
        calls.append(p)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(p, *a, **k)
    monkeypatch.setattr(w.shutil, "rmtree", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        remove_store(s)
    monkeypatch.setattr(w.shutil, "rmtree", real)
    assert (s / "manifest.json").exists() and is_store(s)
    remove_store(s)
    assert list(s.iterdir()) == []


@pytest.mark.slow
def test_dot_in_a_folder_with_files_refuses_and_deletes_nothing(model_dirs, corpus_file, tmp_path):
    """`actdb ingest -o . --overwrite` in a folder that is not a store, run as a real process
    from that folder: one line, exit non-zero, every file as it was."""
    home = tmp_path / "home"
    (home / "src").mkdir(parents=True)
    (home / "thesis.tex").write_text("chapter 1")
    (home / "src" / "main.py").write_bytes(os.urandom(500))
    before = snapshot(home)
    r = subprocess.run([ACTDB, "ingest", str(model_dirs("opt")), str(corpus_file), "-o", ".", "--overwrite", *ARGS],
                       cwd=home, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    err = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(err) == 1 and "not an actdb store; refusing" in err[0] and str(home) in err[0], r.stderr
    assert snapshot(home) == before


@pytest.mark.slow
def test_dot_in_an_empty_folder_and_other_spellings_are_one_store(model_dirs, corpus_file, tmp_path, monkeypatch):
    """`-o .` in an empty folder makes the store there; `./s/`, `s/../s` and a symlink to it
    name the same store and behave the same (refuse without flags, replace with --overwrite);
    files beside the store are never touched."""
    work = tmp_path / "work"
    (work / "s").mkdir(parents=True)
    (work / "beside.txt").write_text("not in the store")
    (tmp_path / "link").symlink_to(work / "s")
    monkeypatch.chdir(work / "s")
    code, out = ingest(model_dirs("opt"), corpus_file, ".")
    assert code == 0, out
    assert (work / "s" / "manifest.json").exists()
    monkeypatch.chdir(work)
    beside = snapshot(work)["beside.txt"]
    for spelling in ("./s/", "s/../s", str(tmp_path / "link"), "s"):
        code, out = ingest(model_dirs("opt"), corpus_file, spelling)
        line = error_line(out)
        assert code != 0 and f"{work / 's'}: store exists (pass --overwrite" in line, (spelling, line)
    for spelling in ("s/../s", str(tmp_path / "link")):   # each a whole ingest: two of them
        code, out = ingest(model_dirs("opt"), corpus_file, spelling, "--overwrite", "--no-index")
        assert code == 0, (spelling, out)
        assert f"store      {work / 's'}" in out, out
        assert (work / "s" / "manifest.json").exists()
        assert snapshot(work)["beside.txt"] == beside
    assert (tmp_path / "link").is_symlink(), "the symlink itself is not replaced"


def test_failed_ingest_into_a_new_folder_leaves_no_folder(model_dirs, tmp_path):
    """Taking the lock creates the folder; refused input removes it again."""
    code, out = ingest("no-such-org/no-such-model", tmp_path / "c.jsonl", tmp_path / "new")
    assert code != 0
    make_corpus(tmp_path / "c.jsonl", n_docs=3)
    code, out = ingest("no-such-org/no-such-model", tmp_path / "c.jsonl", tmp_path / "new")
    assert code != 0 and "unknown model" in error_line(out)
    assert not (tmp_path / "new").exists()


# ---------------------------------------------------------------- 18.2 one writer

HOLD = ("import sys, time\n"
        "from actdb.store.lock import writer_lock\n"
        "with writer_lock(sys.argv[1], 'test holder'):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(600)\n")


def hold_lock(store: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(store)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_lock_in_process_is_reentrant_and_removed(tmp_path):
    with writer_lock(tmp_path, "outer"):
        assert (tmp_path / LOCK_FILE).read_text().split()[0] == str(os.getpid())
        with writer_lock(tmp_path / "." , "inner"):   # the ingest's own index build passes through
            pass
        assert (tmp_path / LOCK_FILE).exists()
    assert not (tmp_path / LOCK_FILE).exists()


@pytest.mark.slow
def test_second_writer_fails_at_once_naming_the_holder(model_dirs, corpus_file, store, tmp_path):
    """While another process holds the lock: ingest --overwrite, ingest --resume and
    index --force each fail at once with one line naming the store and the holder's PID,
    deleting nothing; readers answer as usual. A SIGKILLed holder frees the lock."""
    s = copy_store(store, tmp_path / "s")
    holder = hold_lock(s)
    try:
        before = {k: v for k, v in snapshot(s).items() if k != LOCK_FILE}
        for args in (["ingest", model_dirs("opt"), corpus_file, "-o", s, *ARGS, "--overwrite"],
                     ["index", s, "--force", "--no-progress"]):
            t = time.perf_counter()
            r = subprocess.run([ACTDB, *map(str, args)], capture_output=True, text=True, timeout=300)
            err = [l for l in r.stderr.splitlines() if l.strip()]
            assert r.returncode != 0 and len(err) == 1, r.stderr
            assert f"{s}: locked by another actdb writer (pid {holder.pid}, test holder)" in err[0], err[0]
            assert time.perf_counter() - t < 60, "fails at once, not after waiting"
            assert {k: v for k, v in snapshot(s).items() if k != LOCK_FILE} == before, args[0]
        # readers never take the lock
        code, out = cli("sql", s, "SELECT count(*) AS n FROM neurons", "--format", "csv")
        assert code == 0 and out.splitlines()[-1].strip() != "0", out
        assert cli("check", s)[0] == 0
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (s / LOCK_FILE).exists(), "a killed holder leaves its file..."
    code, out = cli("index", s, "--force", "--no-progress")
    assert code == 0, out   # ...but not its lock
    assert cli("check", s)[0] == 0


PAUSED_INGEST = ("import os, sys, time\n"
                 "import actdb.store.writer as w\n"
                 "write = w.MaskWriter.write_block\n"
                 "def paused(self, index, data):\n"
                 "    while os.path.exists(os.environ['ACTDB_TEST_PAUSE']):\n"
                 "        time.sleep(0.05)\n"
                 "    write(self, index, data)\n"
                 "w.MaskWriter.write_block = paused\n"
                 "from actdb.cli import main\n"
                 "sys.argv[0] = 'actdb'\n"
                 "main()\n")


@pytest.mark.slow
def test_two_real_ingests_into_one_store(model_dirs, tmp_path):
    """A second ingest started while a first one runs (paused before its first mask block
    while a file exists) fails at once naming the first's PID, with or without --overwrite;
    the first then finishes a store that passes check."""
    corpus = make_corpus(tmp_path / "c.jsonl", n_docs=100, seed=5)
    pause = tmp_path / "pause"
    pause.touch()
    s = tmp_path / "s"
    common = [str(model_dirs("opt")), str(corpus), "-o", str(s), "--seq-len", "24", "--block-tokens", "64",
              "--no-progress", "--no-index"]
    first = subprocess.Popen([sys.executable, "-c", PAUSED_INGEST, "ingest", *common],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "ACTDB_TEST_PAUSE": str(pause)})
    try:
        deadline = time.time() + 240
        while not (s / "ingest-state.json").exists() or not (s / "masks").exists():
            assert first.poll() is None, first.stdout.read()
            assert time.time() < deadline
            time.sleep(0.05)
        for extra in ([], ["--overwrite"]):
            r = subprocess.run([ACTDB, "ingest", *common, *extra], capture_output=True, text=True, timeout=300)
            err = [l for l in r.stderr.splitlines() if l.strip()]
            assert r.returncode != 0 and len(err) == 1, (extra, r.stderr)
            assert f"locked by another actdb writer (pid {first.pid}, ingest)" in err[0], err[0]
            assert first.poll() is None, "the first ingest is still running (paused)"
        pause.unlink()
        out, _ = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, out
    assert not (s / LOCK_FILE).exists()
    problems = [p for p in check_store(s).problems if "no query index" not in p]   # built with --no-index
    assert not problems, problems
