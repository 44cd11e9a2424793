"""A damaged index or token Parquet file is never answered from.

DuckDB reads Parquet without checking page CRCs, so without actdb's own check a flipped byte
changes answers with exit 0 (first test). Seeded random flips over every Parquet file of a
store: every query either fails with one line naming the flipped file or, where the flip
cannot reach it, answers exactly as before; never a different answer."""
from __future__ import annotations

import random
import shutil
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import actdb
from actdb.cli import main
from actdb.errors import StoreError
from actdb.files import PARQUET_OPTIONS
from stores import run_ingest

FLIPS = 30   # every file once, the rest at random files


@pytest.fixture(scope="module")
def store(model_dirs, corpus_file, tmp_path_factory) -> Path:
    s = run_ingest(model_dirs("opt"), corpus_file, tmp_path_factory.mktemp("pq") / "s", index=True,
                   block_tokens=128)
    return s.path


def queries(st) -> dict[str, str]:
    """One query per view (every row, in a fixed order): together they read every file a view reads."""
    return {v: f"SELECT * FROM {v} ORDER BY ALL" for v in sorted(st.views())}


def answers(path: Path, qs: dict[str, str]) -> dict[str, object]:
    st = actdb.open(path)
    out: dict[str, object] = {}
    for name, sql in qs.items():
        try:
            out[name] = st.sql(sql, arrow=True)
        except StoreError as e:
            out[name] = e
    return out


def parquet_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.parquet"))


def test_page_checksums_are_written_and_duckdb_does_not_check_them(tmp_path):
    """Why actdb checks sha256 itself: with page checksums written (files.PARQUET_OPTIONS),
    pyarrow notices a flipped data byte, DuckDB answers a different sum."""
    import numpy as np
    import pyarrow as pa

    assert PARQUET_OPTIONS.get("write_page_checksum") is True
    p = tmp_path / "t.parquet"
    pq.write_table(pa.table({"x": np.arange(50_000, dtype=np.int64)}), p,
                   **{**PARQUET_OPTIONS, "compression": "none"}, use_dictionary=False)
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    p.write_bytes(raw)
    with pytest.raises(OSError, match="CRC"):
        pq.read_table(p, page_checksum_verification=True)
    got = duckdb.sql(f"SELECT sum(x) FROM read_parquet('{p}')").fetchall()[0][0]
    assert got != sum(range(50_000)), "if DuckDB now checks CRCs, actdb's sha256 check could be dropped"


@pytest.mark.slow
def test_flipped_byte_in_neuron_fires_names_the_file(store, tmp_path):
    """The issue's case, through the CLI: one line naming the file, exit non-zero, no number."""
    s = tmp_path / "s"
    shutil.copytree(store, s)
    f = s / "index" / "neuron_fires.parquet"
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 3] ^= 0x01
    f.write_bytes(raw)
    r = CliRunner().invoke(main, ["sql", str(s), "SELECT sum(fires) AS n FROM neurons"])
    lines = [l for l in r.output.splitlines() if l.strip()]
    assert r.exit_code != 0 and len(lines) == 1, r.output
    assert "neuron_fires.parquet: sha256 differs" in lines[0], lines[0]
    # a query that does not read it still answers
    r = CliRunner().invoke(main, ["sql", str(s), "SELECT count(*) AS n FROM tokens", "--format", "csv"])
    assert r.exit_code == 0, r.output


@pytest.mark.slow
def test_seeded_random_flips_over_every_parquet_file(store, tmp_path):
    s = tmp_path / "s"
    shutil.copytree(store, s)
    qs = queries(actdb.open(s))
    ref = answers(s, qs)
    assert not [k for k, v in ref.items() if isinstance(v, Exception)], ref
    files = parquet_files(s)
    assert any(f.parent.name == "tokens" for f in files) and any(f.parent.name == "index" for f in files)
    rng = random.Random(18)
    named = {}
    plan = files + [rng.choice(files) for _ in range(max(0, FLIPS - len(files)))]
    for f in plan:   # every file at least once, then random files
        raw = f.read_bytes()
        at = rng.randrange(len(raw))
        bad = bytearray(raw)
        bad[at] ^= 1 << rng.randrange(8)
        f.write_bytes(bad)
        try:
            got = answers(s, qs)
        finally:
            f.write_bytes(raw)
        for name, value in got.items():
            where = f"{f.relative_to(s)} byte {at}, view {name}"
            if isinstance(value, Exception):
                msg = str(value)
                assert "\n" not in msg and f.name in msg, (where, msg)
                assert str(f.relative_to(s).parent) in msg or f.parent == s, (where, msg)
                named[f] = named.get(f, 0) + 1
            else:
                assert value.equals(ref[name]), f"a different answer: {where}"
    # every file some view reads was caught at least once (docs.parquet is read by no view)
    read = {f for f in files if f.name != "docs.parquet"}
    assert read <= set(named), sorted(str(f.relative_to(s)) for f in read - set(named))


@pytest.mark.slow
def test_unrecorded_parquet_file_beside_the_index_is_refused(store, tmp_path):
    """A file a view's glob would pick up (index/capture/*.parquet) that actdb did not record."""
    s = tmp_path / "s"
    shutil.copytree(store, s)
    cap = sorted((s / "index" / "capture").glob("*.parquet"))
    assert cap, "the store has a capture index"
    shutil.copy(cap[0], cap[0].with_name("part-999999.parquet"))
    with pytest.raises(StoreError, match="part-999999.parquet: not recorded at write time"):
        actdb.open(s).sql("SELECT count(*) FROM massive_activations")


@pytest.mark.slow
def test_each_file_is_checked_once_per_handle(store, tmp_path, monkeypatch):
    """Lazy and cached: a query on `neurons` hashes only neuron_fires.parquet, and only once."""
    import actdb.store.parquet_guard as verify

    s = tmp_path / "s"
    shutil.copytree(store, s)
    hashed = []
    real = verify.sha256_file
    monkeypatch.setattr(verify, "sha256_file", lambda p, deadline=None: hashed.append(Path(p).name) or real(p, deadline))
    st = actdb.open(s)
    st.sql("SELECT sum(fires) FROM neurons")
    st.sql("SELECT count(*) FROM neurons WHERE dead")
    assert hashed == ["neuron_fires.parquet"], hashed
    hashed.clear()
    # SQL that can reach files by name checks every file
    st._db()
    st.sql(f"SELECT count(*) FROM read_parquet('{s / 'vocab.parquet'}')")
    assert sorted(hashed + ["neuron_fires.parquet"]) == sorted(f.name for f in parquet_files(s)), "checked already"
