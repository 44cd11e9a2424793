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
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import actdb
from actdb.files import temporary_of
from actdb.cli import main
from crash import run_to_fault, traced_points
from stores import run_ingest

pytestmark = pytest.mark.slow   # processes killed, writes failing at each phase of an ingest

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
    """`actdb index` killed twice at seeded fault points (one of them inside an atomic write, so a
    temporary file is left behind), then run again, gives the same index as one uninterrupted run,
    and no stale temporary. The kills land where the test chose, whatever the timing."""
    import shutil

    ref, store = tmp_path / "ref", tmp_path / "killed"
    shutil.copytree(reference.path, ref)
    shutil.copytree(reference.path, store)
    cmd = [ACTDB, "index", "--no-progress", "--workers", "1", "--memory-mb", "0.001"]
    r = run_to_fault([*cmd, str(ref)], trace=tmp_path / "full.trace")
    assert r.returncode == 0, r.stderr
    points = [p for p, _ in traced_points(tmp_path / "full.trace", before="index.json")]
    assert sum(p.startswith("unit-done") for p in points) >= 4, points
    rng = random.Random(7)
    # the first kill inside an atomic write (a temporary left behind), the second anywhere in
    # what the resumed build does (learnt from a traced run on a copy)
    first = rng.choice([p for p in points if p.startswith("atomic-tmp")])
    r = run_to_fault([*cmd, str(store)], fault=first)
    assert r.returncode == -signal.SIGKILL, (first, r.stderr)
    left = [p for p in (store / "index").rglob(".*.tmp") if temporary_of(p.name)]
    assert left, "a kill inside an atomic write leaves its temporary file"
    res = CliRunner().invoke(main, ["check", str(store)])
    assert res.exit_code != 0 and "index build not finished" in res.output, res.output
    probe = tmp_path / "probe"
    shutil.copytree(store, probe)
    r = run_to_fault([*cmd, str(probe)], trace=tmp_path / "resumed.trace")
    assert r.returncode == 0, r.stderr
    second = rng.choice([p for p, _ in traced_points(tmp_path / "resumed.trace", before="index.json")])
    r = run_to_fault([*cmd, str(store)], fault=second)
    assert r.returncode == -signal.SIGKILL, (second, r.stderr)
    assert not (store / "index" / "index.json").exists()
    r = run_to_fault([*cmd, str(store)])
    assert r.returncode == 0, r.stderr
    same_index(ref / "index", store / "index")
    check_ok(store)


WRITER = r"""
import sys, json
from actdb.store.manifest import Manifest
raw = json.loads(sys.argv[2])
versions = [Manifest.from_dict({**raw, "n_tokens": n, "extra": {"pad": "x" * 1_000_000}}) for n in (111, 222)]
i = 0
while True:
    versions[i % 2].write(sys.argv[1])   # write i + 1 holds versions[i % 2]
    i += 1
"""


def test_sigkill_during_manifest_writes_readers_see_old_or_new(tmp_path):
    """A process rewriting a 1 MB manifest in a loop is killed at seeded fault points, inside an
    atomic write or just after one; meanwhile every read gives one whole version, and after the
    kill exactly the version of the last completed write."""
    from actdb.store.manifest import Manifest
    from records import manifest

    raw = json.dumps(manifest().to_dict())
    rng = random.Random(3)
    for kind in ("atomic-tmp", "atomic-done", "atomic-tmp"):
        n = rng.randint(2, 60)
        errors: list[str] = []
        stop = threading.Event()

        def read_loop() -> None:   # a property of every read, whenever it lands
            while not stop.is_set():
                try:
                    Manifest.read(tmp_path)
                except actdb.StoreError as e:
                    if "missing" not in str(e):   # before the first write
                        errors.append(str(e))
        reader = threading.Thread(target=read_loop)
        reader.start()
        try:
            proc = run_to_fault([sys.executable, "-c", WRITER, str(tmp_path), raw], fault=f"{kind}:{n}", timeout=120)
        finally:
            stop.set()
            reader.join()
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-500:]
        assert not errors, errors[:3]
        last = n - 1 if kind == "atomic-tmp" else n   # the writes completed before the kill
        assert Manifest.read(tmp_path).n_tokens == (111, 222)[(last - 1) % 2]
        if kind == "atomic-tmp":
            assert [p.name for p in tmp_path.glob(".manifest.json.*.tmp")], "the cut write left its temporary"
        for p in tmp_path.glob(".manifest.json.*.tmp"):
            p.unlink()


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
    "checksum record": ("actdb.ingest.forward", "record_checksums", lambda n, a: a[1] == "block-000004", EACCES),
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
