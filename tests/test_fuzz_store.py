"""A seeded fuzz over every JSON record and Parquet file of a store, and over the records of an
interrupted ingest and index build: each flipped byte, or field changed by hand, gives actdb's
own refusal (StoreError / InputError, one line) or exactly the original answer. Never a number
read from a damaged file, never another exception."""
from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import actdb
from actdb.errors import ActdbError
from crash import run_to_fault, traced_points

pytestmark = pytest.mark.slow   # minutes of seeded damage, with real processes killed

ACTDB = str(Path(sys.executable).with_name("actdb"))
SEED = 11
FLIPS = 2   # per file and kind of damage


def digest(value: Any) -> str:
    return hashlib.sha256(repr(value).encode()).hexdigest()


def everything(root: Path) -> dict[str, str]:
    """What a reader gets from the store: every view of every rule (whole), every mask, the
    token, document and vocabulary tables; each as a digest. Raises ActdbError on a refusal."""
    out = {}
    base = actdb.open(root)
    for rule in base.rules:
        st = actdb.open(root, rule=rule)
        for view in sorted(st.views()):
            out[f"{rule}/{view}"] = digest(st.sql(f"SELECT * FROM {view} ORDER BY ALL").rows())
        for layer in st.manifest.layers:
            out[f"{rule}/masks/{layer}"] = hashlib.sha256(np.packbits(st.masks(layer)).tobytes()).hexdigest()
    out["tokens"] = digest(base.tokens().rows())
    out["docs"] = digest(base.docs().rows())
    out["vocab"] = digest(base.vocab().rows())
    return out


def refused_or_same(root: Path, original: dict[str, str], what: str) -> str:
    try:
        got = everything(root)
    except ActdbError as e:
        assert "\n" not in str(e), (what, str(e))
        return "refused"
    assert got == original, (what, sorted(k for k in got if got[k] != original.get(k))[:5])
    return "same"


def perturb_field(raw: Any, rng: random.Random) -> Any:
    """The record with one leaf value changed as a hand edit would (a digit, a word, a flag)."""
    paths: list[tuple] = []

    def walk(x, path):
        if isinstance(x, dict):
            for k, v in x.items():
                walk(v, path + (k,))
        elif isinstance(x, list):
            for i, v in enumerate(x):
                walk(v, path + (i,))
        else:
            paths.append(path)
    walk(raw, ())
    path = rng.choice(paths)
    parent = raw
    for k in path[:-1]:
        parent = parent[k]
    v = parent[path[-1]]
    if isinstance(v, bool):
        parent[path[-1]] = not v
    elif isinstance(v, int):
        parent[path[-1]] = v + rng.choice([-1, 1, 10])
    elif isinstance(v, float):
        parent[path[-1]] = v * 1.01 + 1e-6
    elif isinstance(v, str):
        parent[path[-1]] = v[:-1] + ("0" if v[-1:] != "0" else "1") if v else "x"
    else:
        parent[path[-1]] = 0
    return raw


def damaged(path: Path, rng: random.Random, kind: str) -> bytes:
    data = path.read_bytes()
    if kind == "byte":
        b = bytearray(data)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        return bytes(b)
    raw = perturb_field(json.loads(data), rng)   # the checksum left as it was: a hand edit
    return json.dumps(raw, indent=1).encode()


def test_every_record_and_table_of_a_store(tiny_store, tmp_path):
    root = Path(shutil.copytree(tiny_store, tmp_path / "s"))
    original = everything(root)
    rng = random.Random(SEED)
    records = sorted(p for p in root.rglob("*.json"))
    tables = sorted(p for p in root.rglob("*.parquet"))
    assert len(records) >= 10 and len(tables) >= 30   # manifest, checksums, index records, zarr metadata
    targets = [(p, kind) for p in records for kind in ("byte", "field")] + \
              [(p, "byte") for p in rng.sample(tables, 16)]
    outcomes = {"refused": 0, "same": 0}
    for path, kind in targets:
        good = path.read_bytes()
        for _ in range(FLIPS):
            bad = damaged(path, rng, kind)
            if bad == good:
                continue
            path.write_bytes(bad)
            try:
                outcomes[refused_or_same(root, original, f"{kind} in {path.relative_to(root)}")] += 1
            finally:
                path.write_bytes(good)
    assert outcomes["refused"] >= len(targets), outcomes   # what a reader reads, a flip there is refused
    assert everything(root) == original


def test_records_of_an_interrupted_ingest(model_dirs, corpus_file, tmp_path):
    """An ingest killed mid-forward; its state, pending checksum records and staged tokens damaged:
    the resume refuses, or completes the very store an uninterrupted ingest writes."""
    cmd = [ACTDB, "ingest", str(model_dirs("opt")), str(corpus_file), "--seq-len", "24", "--block-tokens", "64",
           "--no-progress", "--no-index", "--fire-rule", "sign", "--fire-rule", "top:0.9"]
    whole = tmp_path / "whole"
    assert run_to_fault([*cmd, "-o", str(whole)], trace=tmp_path / "trace").returncode == 0
    reference = everything_but_views(whole)
    layers = [f for f, _ in traced_points(tmp_path / "trace") if f.startswith("mask-layer")]
    killed = tmp_path / "killed"
    assert run_to_fault([*cmd, "-o", str(killed)], fault=layers[len(layers) // 2]).returncode < 0
    rng = random.Random(SEED)
    targets = [(killed / "ingest-state.json", "byte"), (killed / "ingest-state.json", "field"),
               *[(p, "field") for p in rng.sample(sorted((killed / "_checksums").glob("*.json")), 2)],
               (killed / "_staging" / "token_ids.i32", "byte"), (killed / "_staging" / "seq_offsets.i64", "byte")]
    refused = 0
    for i, (path, kind) in enumerate(targets):
        trial = Path(shutil.copytree(killed, tmp_path / f"t{i}"))
        p = trial / path.relative_to(killed)
        p.write_bytes(damaged(p, rng, kind))
        r = subprocess.run([*cmd, "-o", str(trial), "--resume"], capture_output=True, text=True)
        if r.returncode != 0:
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in r.stderr, r.stderr
            refused += 1
        else:
            assert everything_but_views(trial) == reference, (kind, p)
    assert refused >= 4, refused


def everything_but_views(root: Path) -> dict[str, str]:
    """A store without its index: the masks of every rule and the tables."""
    st = actdb.open(root)
    out = {f"{r}/{l}": hashlib.sha256(np.packbits(actdb.open(root, rule=r).masks(l)).tobytes()).hexdigest()
           for r in st.rules for l in st.manifest.layers}
    out.update(tokens=digest(st.tokens().rows()), docs=digest(st.docs().rows()), vocab=digest(st.vocab().rows()),
               thresholds=digest([r.thresholds for r in st.manifest.fire_rules]))
    return out


def test_state_of_an_interrupted_index_build(tiny_store, tmp_path):
    """A first index build killed after some units; its state damaged: the next build starts over
    or refuses, and never answers with units missing."""
    root = Path(shutil.copytree(tiny_store, tmp_path / "s"))
    original = everything(root)
    shutil.rmtree(root / "index")
    cmd = [ACTDB, "index", "--rule", "sign", "--no-progress", "--workers", "1", "--memory-mb", "0.001"]
    probe = Path(shutil.copytree(root, tmp_path / "probe"))
    assert run_to_fault([*cmd, str(probe)], trace=tmp_path / "trace").returncode == 0
    units = [f for f, _ in traced_points(tmp_path / "trace") if f.startswith("unit-done")]
    rng = random.Random(SEED)
    for i, kind in enumerate(("byte", "field", "field", "byte")):
        trial = Path(shutil.copytree(root, tmp_path / f"t{i}"))
        assert run_to_fault([*cmd, str(trial)], fault=units[len(units) // 2]).returncode < 0
        state = trial / "index" / "_state.json"
        state.write_bytes(damaged(state, rng, kind))
        r = subprocess.run([*cmd, str(trial)], capture_output=True, text=True)
        if r.returncode == 0:
            assert refused_or_same(trial, original, f"{kind} in _state.json") == "same"
        else:
            assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
