"""An ingest killed with SIGKILL mid-run and resumed equals an uninterrupted run; readers
never see a torn store."""
import json
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import actdb
from actdb.cli import main
from actdb.files import temporary_of
from crash import run_to_fault, traced_points
from stores import run_ingest
from tiny import make_corpus

pytestmark = pytest.mark.slow   # real processes killed and resumed

ACTDB = str(Path(sys.executable).with_name("actdb"))
ARGS = ["--seq-len", "24", "--batch-size", "8", "--block-tokens", "256", "--no-progress", "--no-index"]


def blocks_done(store: Path) -> int:
    try:
        return json.loads((store / "ingest-state.json").read_text())["blocks_done"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return -1


@pytest.fixture(scope="module")
def big(model_dirs, tmp_path_factory):
    """A corpus of ~60 blocks, its uninterrupted store, and the fault points that ingest reached
    (actdb.faults: "NAME:N" with the detail of each, in order)."""
    d = tmp_path_factory.mktemp("resume")
    corpus = make_corpus(d / "big.jsonl", n_docs=500, seed=0)
    r = run_to_fault([ACTDB, "ingest", str(model_dirs("opt")), str(corpus), "-o", str(d / "whole"), *ARGS],
                     trace=d / "trace")
    assert r.returncode == 0, r.stderr
    return corpus, actdb.open(d / "whole"), traced_points(d / "trace")


class Reader(threading.Thread):
    """Opens the store over and over while an ingest runs: it must see 'not finished' (or no
    store yet) until the manifest is written, then the complete store, never a torn one. How
    many opens land during the run is up to the scheduler; two are not: one when it starts
    (before the ingest: refused) and one when it finishes (after it: the complete store)."""

    def __init__(self, store: Path, ref) -> None:
        super().__init__()
        self.store, self.ref = store, ref
        self.stop, self.opened, self.errors, self.attempts = threading.Event(), 0, [], 0

    def start(self) -> None:
        self.attempt()
        super().start()

    def run(self) -> None:
        while True:
            finishing = self.stop.wait(0.01)  # ~100 opens a second, without starving the ingest
            self.attempt()
            if finishing:
                return

    def attempt(self) -> None:
        self.attempts += 1
        try:
            st = actdb.open(self.store)
        except actdb.StoreError as e:
            if not any(s in str(e) for s in ("not finished", "no such store", "not an actdb store")):
                self.errors.append(str(e))
            return
        except Exception as e:  # noqa: BLE001 - anything else is a torn read
            self.errors.append(f"{type(e).__name__}: {e}")
            return
        if not self.opened:  # the first complete view is checked in full
            try:
                assert st.tokens().equals(self.ref.tokens())
                for layer in self.ref.manifest.layers:
                    assert np.array_equal(st.masks(layer), self.ref.masks(layer))
            except Exception as e:  # noqa: BLE001
                self.errors.append(f"complete store differs: {type(e).__name__}: {e}")
        self.opened += 1

    def finish(self) -> None:
        self.stop.set()
        self.join()
        assert not self.errors, self.errors[:3]


@pytest.mark.parametrize("seed,phase", [(0, "tokenize"), (1, "forward"), (2, "forward")])
def test_sigkill_then_resume_equals_uninterrupted(seed, phase, model_dirs, big, tmp_path):
    """Killed at a seeded fault point (while writing the token tables, or in the forward passes:
    between the layers of a mask block or inside the write of the ingest state), resumed, the
    store equals an uninterrupted run; a reader watching throughout never sees a torn store.
    Where the kill lands is chosen by the test (actdb.faults), never by timing."""
    corpus, ref, points = big
    mdir = model_dirs("opt")
    store = tmp_path / "killed"
    rng = random.Random(seed)
    tables = next(i for i, (_, detail) in enumerate(points) if detail == "tables.json")
    if phase == "tokenize":
        candidates = [p for p, detail in points[:tables] if detail.startswith("part-")]
    else:
        candidates = [p for p, detail in points[tables + 1:]
                      if p.startswith("mask-layer") or (p.startswith("atomic-tmp") and detail == "ingest-state.json")]
    fault = rng.choice(candidates[:len(candidates) * 3 // 4])   # not among the last blocks
    reader = Reader(store, ref)
    reader.start()
    proc = run_to_fault([ACTDB, "ingest", str(mdir), str(corpus), "-o", str(store), *ARGS], fault)
    assert proc.returncode == -signal.SIGKILL, (fault, proc.stderr[-1000:])
    done = blocks_done(store)
    assert not (store / "manifest.json").exists(), "a killed ingest must not look complete"
    assert reader.opened == 0
    with pytest.raises(actdb.StoreError, match="not finished"):
        actdb.open(store)
    killed = CliRunner().invoke(main, ["check", str(store)])
    assert killed.exit_code != 0 and "ingest not finished" in killed.output

    resumed = subprocess.run([ACTDB, "ingest", str(mdir), str(corpus), "-o", str(store), *ARGS, "--resume"],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    reader.finish()
    assert reader.opened > 0 and reader.attempts > reader.opened
    if done > 0:
        assert f"resumed at token {done * 256:,}" in resumed.stdout
    got = actdb.open(store)
    assert got.manifest.n_tokens == ref.manifest.n_tokens > done * 256
    assert got.tokens().equals(ref.tokens())
    for layer in ref.manifest.layers:
        assert np.array_equal(got.masks(layer), ref.masks(layer)), f"layer {layer}"
    assert not list(store.rglob("*.partial")) and not (store / "_staging").exists()
    assert not [p for p in store.rglob(".*.tmp") if temporary_of(p.name)], "a stale temporary outlived the resume"
    # the checksums recorded across the kill and the resume are those of the final files
    check = CliRunner().invoke(main, ["check", str(store)])
    probs = [l for l in check.output.splitlines() if l.startswith("problem")]
    assert len(probs) == 1 and "no query index" in probs[0], check.output


def test_failed_write_leaves_resumable_store(model_dirs, corpus_file, tmp_path, monkeypatch):
    """A write that fails mid-ingest (disk full, say) stops with the store resumable, and a
    resume with different settings is refused, naming the setting."""
    from actdb.store.writer import MaskWriter

    real = MaskWriter.write_block

    def failing(self, index, data):
        if index == 2:
            raise OSError(28, "No space left on device")
        real(self, index, data)

    monkeypatch.setattr(MaskWriter, "write_block", failing)
    store = tmp_path / "s"
    with pytest.raises(actdb.StoreError, match="No space left on device.*--resume"):
        run_ingest(model_dirs("opt"), corpus_file, store)
    assert blocks_done(store) == 2
    monkeypatch.setattr(MaskWriter, "write_block", real)
    with pytest.raises(actdb.InputError, match="seq_len: expected 24 .*got 32"):
        run_ingest(model_dirs("opt"), corpus_file, store, resume=True, seq_len=32)
    run_ingest(model_dirs("opt"), corpus_file, store, resume=True)
    ref = run_ingest(model_dirs("opt"), corpus_file, tmp_path / "whole")
    for layer in ref.manifest.layers:
        assert np.array_equal(actdb.open(store).masks(layer), ref.masks(layer))
