"""Faults with real processes and failing writes: SIGKILL during the index build and during
manifest writes; disk-full and permission errors at each phase of ingest. (SIGKILL during
ingest, with a reader watching, is in test_resume.py.)"""
from __future__ import annotations

import json
import random
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import actdb
from actdb.cli import main
from test_ingest_masks import run_ingest

ACTDB = str(Path(sys.executable).with_name("actdb"))


def n_files(d: Path) -> int:
    try:
        return sum(1 for p in d.rglob("*") if p.is_file())
    except FileNotFoundError:  # files come and go under us
        return 0


def same_index(a: Path, b: Path) -> None:
    """Every file of two index folders holds the same data (Parquet compared as tables)."""
    fa = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    fb = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert fa == fb
    for rel in fa:
        if rel.suffix == ".parquet":
            assert pq.read_table(a / rel).equals(pq.read_table(b / rel)), rel
        elif rel.name == "index.json":
            assert json.loads((a / rel).read_text())["config"] == json.loads((b / rel).read_text())["config"]
        else:
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def check_ok(store: Path) -> None:
    res = CliRunner().invoke(main, ["check", str(store)])
    assert res.exit_code == 0, res.output


@pytest.fixture(scope="module")
def reference(model_dirs, corpus_file, tmp_path_factory):
    """A tiny OPT store without its index (several blocks of 64 tokens)."""
    return run_ingest(model_dirs("opt"), corpus_file, tmp_path_factory.mktemp("faults") / "ref", block_tokens=64)


def test_sigkill_during_index_build_then_rerun_equals_uninterrupted(reference, tmp_path):
    """`actdb index` killed twice at seeded points (by how far it got on disk), then run
    again, gives the same index as one uninterrupted run. Driven through the CLI only."""
    import shutil

    ref, store = tmp_path / "ref", tmp_path / "killed"
    shutil.copytree(reference.path, ref)
    shutil.copytree(reference.path, store)
    # the uninterrupted build, watched to learn how many files it has at most at once
    proc = subprocess.Popen([ACTDB, "index", str(ref), "--no-progress"], stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, n_files(ref / "index"))
        time.sleep(0.002)
    assert proc.returncode == 0, proc.stderr.read().decode()
    assert peak >= 4, "the build should leave intermediate files to kill it among"
    rng = random.Random(7)
    points = sorted(rng.sample(range(1, int(peak * 0.8) + 1), 2))
    killed_early = 0
    for point in points:
        proc = subprocess.Popen([ACTDB, "index", str(store), "--no-progress"], stderr=subprocess.DEVNULL)
        while n_files(store / "index") < point and proc.poll() is None:
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if not (store / "index" / "index.json").exists():
            killed_early += 1
            # a killed build never looks complete, and check says so
            res = CliRunner().invoke(main, ["check", str(store)])
            assert res.exit_code != 0 and "index build not finished" in res.output, res.output
    assert killed_early >= 1, "no kill landed before the build finished"
    res = subprocess.run([ACTDB, "index", str(store), "--no-progress"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    same_index(ref / "index", store / "index")
    check_ok(store)


WRITER = r"""
import sys, json
from actdb.store.manifest import Manifest
raw = json.loads(sys.argv[2])
versions = [Manifest.from_dict({**raw, "n_tokens": n, "extra": {"pad": "x" * 1_000_000}}) for n in (111, 222)]
versions[0].write(sys.argv[1])
print("ready", flush=True)
i = 0
while True:
    i += 1
    versions[i % 2].write(sys.argv[1])
"""


def test_sigkill_during_manifest_writes_readers_see_old_or_new(tmp_path):
    """A process rewriting a 1 MB manifest in a loop is killed at seeded random moments;
    meanwhile and after, every read gives one whole version, never a torn one."""
    from actdb.store.manifest import Manifest
    from test_units import manifest

    raw = manifest().to_json()
    rng = random.Random(3)
    seen: list[int] = []
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), raw], stdout=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready"
        stop = threading.Event()
        errors: list[str] = []

        def read_loop() -> None:
            while not stop.is_set():
                try:
                    seen.append(Manifest.read(tmp_path).n_tokens)
                except actdb.StoreError as e:
                    errors.append(str(e))
        reader = threading.Thread(target=read_loop)
        reader.start()
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(0.05)
        stop.set()
        reader.join()
        assert not errors, errors[:3]
        assert Manifest.read(tmp_path).n_tokens in (111, 222)
    assert set(seen) == {111, 222}, "the reader should have seen both versions"


def assert_equal_stores(got, ref) -> None:
    assert got.tokens().equals(ref.tokens())
    for layer in ref.manifest.layers:
        assert np.array_equal(got.masks(layer), ref.masks(layer)), f"layer {layer}"


def _fail_on(monkeypatch, target, attr, when, error):
    real = getattr(target, attr)
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if when(calls["n"], args):
            raise error
        return real(*args, **kwargs)
    monkeypatch.setattr(target, attr, failing)


ENOSPC = OSError(28, "No space left on device")
EACCES = PermissionError(13, "Permission denied")


def only_index_missing(store: Path) -> None:
    res = CliRunner().invoke(main, ["check", str(store)])
    probs = [l for l in res.output.splitlines() if l.startswith("problem")]
    assert len(probs) == 1 and "no query index" in probs[0], res.output  # these ingests skip the index


# phase -> (module, function, fails when (call number, args), error)
PHASES = {
    "token tables": ("actdb.ingest.tables", "write_parquet", lambda n, a: n == 3, ENOSPC),
    "checksum record": ("actdb.ingest.pipeline", "record_checksums", lambda n, a: a[1] == "block-000004", EACCES),
    "checksums seal": ("actdb.store.writer", "atomic_write_text", lambda n, a: Path(a[0]).name == "checksums.json", ENOSPC),
    "manifest": ("actdb.store.manifest", "atomic_write_text", lambda n, a: Path(a[0]).name == "manifest.json", EACCES),
}


@pytest.mark.parametrize("phase", list(PHASES))
def test_write_errors_in_each_phase_end_in_one_line_and_resume(phase, model_dirs, corpus_file, tmp_path, monkeypatch,
                                                               reference):
    """Disk full / permission denied while writing the token tables, a block's checksum
    record, the checksum file or the manifest (a failing mask write is in test_resume.py):
    one clear line, no
    complete-looking store, and --resume then gives what an uninterrupted run gives."""
    import importlib

    module, attr, when, error = PHASES[phase]
    _fail_on(monkeypatch, importlib.import_module(module), attr, when, error)
    out = tmp_path / "s"
    with pytest.raises(actdb.StoreError, match=f"{error.strerror}.*resumed with --resume") as e:
        run_ingest(model_dirs("opt"), corpus_file, out, block_tokens=64)
    assert "\n" not in str(e.value)
    with pytest.raises(actdb.StoreError, match="not finished"):
        actdb.open(out)
    monkeypatch.undo()
    run_ingest(model_dirs("opt"), corpus_file, out, block_tokens=64, resume=True)
    assert_equal_stores(actdb.open(out), reference)
    only_index_missing(out)


def test_real_file_size_limit_in_a_real_process(model_dirs, corpus_file, tmp_path, reference):
    """A real OS write error (RLIMIT_FSIZE: EFBIG) in a real `actdb ingest` process: one line
    on stderr, no traceback, and the store resumes to the uninterrupted result."""
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG from write() instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))

    out = tmp_path / "s"
    args = [ACTDB, "ingest", str(model_dirs("opt")), str(corpus_file), "-o", str(out), "--seq-len", "24",
            "--batch-size", "3", "--block-tokens", "64", "--no-progress", "--no-index"]
    res = subprocess.run(args, capture_output=True, text=True, preexec_fn=limit)
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
    err = [l for l in res.stderr.splitlines() if l.startswith("Error:")]
    assert len(err) == 1 and "File too large" in err[0] and "--resume" in err[0], res.stderr
    run_ingest(model_dirs("opt"), corpus_file, out, block_tokens=64, resume=True)
    assert_equal_stores(actdb.open(out), reference)
    only_index_missing(out)
