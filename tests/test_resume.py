"""An ingest killed with SIGKILL mid-run and resumed equals an uninterrupted run."""
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import actdb
from test_ingest_masks import run_ingest
from tiny import make_corpus

ACTDB = str(Path(sys.executable).with_name("actdb"))
ARGS = ["--seq-len", "24", "--batch-size", "3", "--block-tokens", "256", "--no-progress"]


def blocks_done(store: Path) -> int:
    try:
        return json.loads((store / "ingest-state.json").read_text())["blocks_done"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return -1


@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_then_resume_equals_uninterrupted(seed, model_dirs, tmp_path):
    mdir = model_dirs("opt")
    corpus = make_corpus(tmp_path / "big.jsonl", n_docs=2500, seed=seed)
    store = tmp_path / "killed"
    target = random.Random(seed).randint(2, 12)  # seeded kill point, in committed blocks
    proc = subprocess.Popen([ACTDB, "ingest", str(mdir), str(corpus), "-o", str(store), *ARGS],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while blocks_done(store) < target:
        assert proc.poll() is None, f"ingest ended before the kill: {proc.stdout.read().decode()[-500:]}"
        assert time.time() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = blocks_done(store)
    assert not (store / "manifest.json").exists(), "a killed ingest must not look complete"
    with pytest.raises(actdb.StoreError, match="not finished"):
        actdb.open(store)

    resumed = subprocess.run([ACTDB, "ingest", str(mdir), str(corpus), "-o", str(store), *ARGS, "--resume"],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed at token {done * 256:,}" in resumed.stdout
    got = actdb.open(store)
    ref = run_ingest(mdir, corpus, tmp_path / "whole")
    assert got.manifest.n_tokens == ref.manifest.n_tokens > done * 256
    assert got.tokens().equals(ref.tokens())
    for layer in ref.manifest.layers:
        assert np.array_equal(got.masks(layer), ref.masks(layer)), f"layer {layer}"
    assert not list(store.rglob("*.partial")) and not (store / "_staging").exists()


def test_failed_write_leaves_resumable_store(model_dirs, corpus_file, tmp_path, monkeypatch):
    """A write that fails mid-ingest (disk full, say) stops with the store resumable, and a
    resume with different settings is refused, naming the setting."""
    from actdb.store import MaskWriter

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
