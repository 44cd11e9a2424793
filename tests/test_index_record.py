"""One home per fact and atomic index rebuilds: the thresholds the index
records and the views use, their ranges, the validated index record and ingest state, the one
layer-list grammar, and `actdb index --force` that never leaves a store without an answering index."""
from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import actdb
from actdb.cli import main
from actdb.index.build import build_index
from actdb.query.connection import connect
from actdb.grammar import parse_layer_list
from actdb.settings import IndexSettings
from actdb.store.index_info import read_index_info
from actdb.store.record import seal
from actdb.store.ingest_state import IngestState
from actdb.store.writer import read_state, write_state
from crash import run_to_fault, traced_points
from records import rewrite_record
from stores import make_known

ACTDB = str(Path(sys.executable).with_name("actdb"))
ANSWERS = ("SELECT count(*) FROM token_detectors", "SELECT sum(fires) FROM neurons",
           "SELECT count(*) FROM coverage", "SELECT count(*) FROM positional_neurons")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    p = make_known(tmp_path_factory.mktemp("facts") / "s")
    build_index(p, progress=False)
    return p


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def answers(p: Path) -> list:
    st = actdb.open(p)
    return [st.sql(q).item() for q in ANSWERS]


def one_line_error(r) -> str:
    assert r.exit_code != 0, r.output
    lines = [l for l in r.output.splitlines() if l.strip()]
    assert len(lines) == 1, r.output
    return lines[0]


# ---------------------------------------------------------------- thresholds: one home

def test_index_records_its_thresholds_and_the_views_default_to_them(built, tmp_path):
    """Built at other thresholds: index.json and index_info show them, the macros' defaults are them,
    and the precomputed tables (exact) equal the scan at the same values."""
    p = copy(built, tmp_path / "s")
    build_index(p, progress=False, p_cov=0.8, tok_max_cov=2, tri_max_cov=7, p_token=0.9, p_share=0.85,
                mi_min=0.1, min_switches=2)
    c = read_index_info(p).config
    assert (c.p_cov, c.tok_max_cov, c.tri_max_cov, c.p_token, c.p_share, c.mi_min, c.min_switches) == \
        (0.8, 2, 7, 0.9, 0.85, 0.1, 2)
    st = actdb.open(p)
    info = st.sql("SELECT * FROM index_info").row(0, named=True)
    assert {k: info[k] for k in ("p_cov", "tok_max_cov", "tri_max_cov", "p_token", "p_share", "mi_min",
                                 "min_switches", "weak_eps", "abs_min", "ratio")} == c.thresholds()
    scan = connect(st, pre=False, lazy=False)
    for view, explicit in [
            ("coverage", "coverage_at(p := 0.8)"),
            ("token_detectors", "token_detectors_at(max_cov := 2, p_cov := 0.8, p_token := 0.9, p_share := 0.85)"),
            ("trigram_detectors", "trigram_detectors_at(max_cov := 7, p_cov := 0.8, p_token := 0.9, p_share := 0.85)"),
            ("positional_neurons", "positional_neurons_at(mi_min := 0.1, min_switches := 2)")]:
        q = f"SELECT * FROM {view} ORDER BY 1, 2, 3"
        got = st.sql(q).rows()
        assert got == st.sql(f"SELECT * FROM {explicit} ORDER BY 1, 2, 3").rows(), view
        scanned = [tuple(r) for r in scan.sql(q).fetchall()]
        if view == "coverage":   # the scan knows n_covering only within the top_k rows (NULL beyond)
            scanned = [a if b[3] is None else b for a, b in zip(got, scanned)]
            assert any(b[3] is not None for b in scanned)
        assert got == scanned, view   # precomputed at the recorded thresholds == the scan
    # the paper's defaults are no longer special: they are answered by the scan
    assert st.sql("SELECT count(*) FROM coverage_at(p := 0.95)").item() == \
        scan.sql("SELECT count(*) FROM coverage_at(p := 0.95)").fetchall()[0][0]
    # and the default build records the paper's
    d = read_index_info(built).config
    assert d.thresholds() == IndexSettings().thresholds() and (d.p_cov, d.tok_max_cov, d.tri_max_cov) == (0.95, 5, 50)


@pytest.mark.parametrize("option, value, expected", [
    ("p_cov", 1.5, "--p-cov: expected a number in (0, 1], got 1.5"),
    ("p_token", 0, "--p-token: expected a number in (0, 1], got 0"),
    ("tok_max_cov", -1, "--tok-max-cov: expected an integer >= 1, got -1"),
    ("tri_max_cov", 2.5, "--tri-max-cov: expected an integer >= 1, got 2.5"),
    ("mi_min", -0.1, "--mi-min: expected a number >= 0, got -0.1"),
    ("weak_eps", 0.5, "--weak-eps: expected a number in [0, 0.5), got 0.5"),
    ("top_k", 0, "--top-k: expected a positive number of n-grams per neuron, got 0"),
])
def test_index_thresholds_out_of_range_are_refused(option, value, expected):
    with pytest.raises(actdb.InputError) as e:
        IndexSettings(**{option: value})
    assert str(e.value) == expected


def test_index_cli_options_come_from_the_settings(built, tmp_path):
    r = CliRunner().invoke(main, ["index", str(built), "--p-share", "2", "--no-progress"])
    assert one_line_error(r) == "Error: --p-share: expected a number in (0, 1], got 2.0"
    r = CliRunner().invoke(main, ["index", "--help"])
    for option in ("--p-cov", "--tok-max-cov", "--tri-max-cov", "--p-token", "--p-share", "--weak-eps",
                   "--mi-min", "--min-switches", "--top-k", "--memory-mb", "--workers", "--layers", "--force"):
        assert option in r.output
    p = copy(built, tmp_path / "s")
    r = CliRunner().invoke(main, ["index", str(p), "--tok-max-cov", "3", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert actdb.open(p).sql("SELECT tok_max_cov FROM index_info").item() == 3


@pytest.mark.parametrize("sql, expected", [
    ("SELECT * FROM coverage_at(p := 1.5)", "p: expected a number in (0, 1], got 1.5"),
    ("SELECT count(*) FROM token_detectors_at(max_cov := 0)", "max_cov: expected an integer >= 1, got 0"),
    ("SELECT count(*) FROM token_detectors_at(p_share := -1)", "p_share: expected a number in (0, 1], got -1"),
    ("SELECT * FROM trigram_detectors_at(max_cov := 2.5)", "max_cov: expected an integer >= 1, got 2.5"),
    ("SELECT * FROM positional_neurons_at(mi_min := -1)", "mi_min: expected a number >= 0, got -1"),
    ("SELECT count(*) FROM oscillatory_ranges_at(min_switches := 0)", "min_switches: expected an integer >= 1, got 0"),
])
def test_macro_thresholds_out_of_range_are_refused(built, sql, expected):
    """In SQL, on empty answers too (count(*) over the macro), with the macro parameter's name."""
    with pytest.raises(actdb.InputError, match="expected") as e:
        actdb.open(built).sql(sql)
    assert str(e.value).endswith(expected), str(e.value)


def test_saved_query_parameter_out_of_range_is_one_line(built):
    r = CliRunner().invoke(main, ["query", str(built), "token_detectors_per_layer", "-p", "max_cov", "-2"])
    assert one_line_error(r).endswith("max_cov: expected an integer >= 1, got -2")
    r = CliRunner().invoke(main, ["query", str(built), "positional_by_kind", "-p", "mi_min", "-0.5"])
    assert one_line_error(r).endswith("mi_min: expected a number >= 0, got -0.5")


# ---------------------------------------------------------------- the index record

def _rewrite_config(p: Path, **changes) -> Path:
    """index.json with `changes` to its config, checksum and all (as a buggy actdb would write it)."""
    f = p / "index" / "index.json"

    def change(raw):
        config = {k: v for k, v in {**raw["config"], **changes}.items() if v is not None}
        return {**raw, "config": config}
    rewrite_record(f, change)
    return f


@pytest.mark.parametrize("key, value, expected", [
    ("p_cov", "0.95) UNION SELECT 1 --", "config: p_cov: expected a number, got '0.95) UNION SELECT 1 --'"),
    ("vocab_base", 12.5, "config: vocab_base: expected an integer, got 12.5"),
    ("ngram_layers", [0, 9], "config: ngram_layers: expected among the layers [0, 1, 2], got [0, 9]"),
    ("tok_max_cov", 0, "config: tok_max_cov: expected an integer >= 1, got 0"),
    ("prefix", "yes", "config: prefix: expected true or false, got 'yes'"),
    ("colour", "red", "expected known fields, got unknown colour"),
])
def test_bad_index_record_values_never_reach_sql(built, tmp_path, key, value, expected):
    p = copy(built, tmp_path / "s")
    f = p / "index" / "index.json"
    f.write_text(f.read_text().replace('"top_k": ', '"top_k": 1', 1))   # edited: the checksum says so
    with pytest.raises(actdb.StoreError, match="index.json: checksum differs from the record's content"):
        actdb.open(p).sql("SELECT 1")
    f = _rewrite_config(p, **{key: value})
    with pytest.raises(actdb.StoreError) as e:
        actdb.open(p).sql("SELECT 1")
    assert str(e.value).startswith(str(f)) and expected in str(e.value), str(e.value)


def test_old_index_records(built, tmp_path):
    """Older versions (n-grams without PAD before 4, no checksum or store identity before 5) are
    never read with other semantics: they say to rebuild, and a plain `actdb index` rebuilds at
    the current version. Version 5 (no massive-activation summaries) still answers, and a plain
    `actdb index` rebuilds it too."""
    from actdb.store.index_info import INDEX_VERSION

    assert INDEX_VERSION == 6
    p = copy(built, tmp_path / "s")
    for version in (1, 2, 3, 4):
        f = _rewrite_config(p, version=version)
        with pytest.raises(actdb.StoreError) as e:
            actdb.open(p).sql("SELECT 1")
        assert str(e.value) == (f"{f}: config: version: expected 5 or 6, got {version} (an index of an older "
                                "actdb: rebuild it with `actdb index STORE --force`)")
    build_index(p, progress=False)
    assert read_index_info(p).config.version == 6 and answers(p) == answers(built)
    _rewrite_config(p, version=5)
    assert read_index_info(p).config.version == 5 and answers(p) == answers(built)
    build_index(p, progress=False)
    assert read_index_info(p).config.version == 6 and answers(p) == answers(built)


def test_ingest_state_is_validated(tmp_path):
    assert read_state(tmp_path) is None
    st = IngestState(identity={"model": "m"})
    write_state(tmp_path, st)
    assert read_state(tmp_path) == st
    done = st.replace(tokenized={"n_tokens": 10, "n_sequences": 2, "n_docs": 1, "n_parts": 1}, blocks_done=1)
    write_state(tmp_path, done)
    assert read_state(tmp_path) == done
    f = tmp_path / "ingest-state.json"
    # blocks_done raised by hand: the checksum refuses it (a resume would leave blocks of zeros)
    f.write_text(f.read_text().replace('"blocks_done": 1', '"blocks_done": 2'))
    with pytest.raises(actdb.StoreError, match="ingest-state.json: checksum differs from the record's content"):
        read_state(tmp_path)
    for raw, expected in [
            ({"identity": {}, "blocks_done": "3"}, "blocks_done: expected an integer, got '3'"),
            ({"identity": {}, "blocks_done": -1}, "blocks_done: expected an integer >= 0, got -1"),
            ({"identity": {}, "tokenized": {"n_tokens": None}}, "tokenized.n_tokens: expected an integer >= 0, got None"),
            ({"blocks_done": 0}, "identity: expected a value, got nothing"),
            ({"identity": {}, "format_version": 9}, "format_version: expected 2, got 9 (written by a newer actdb")]:
        f.write_text(seal({"format_version": 2, **raw}))   # checksum and all: the checks below it
        with pytest.raises(actdb.StoreError) as e:
            read_state(tmp_path)
        assert str(e.value).startswith(f"{f}: ") and expected in str(e.value), str(e.value)
    # of an older actdb (version 1, or before the version field): start again, said in one line
    f.write_text(json.dumps({"identity": {"a": 1}, "tokenized": None, "blocks_done": 2}))
    with pytest.raises(actdb.StoreError, match="format_version: expected 2, got 1 .*--overwrite"):
        read_state(tmp_path)


# ---------------------------------------------------------------- one layer grammar

def test_layer_grammar_shared_by_ingest_and_index(built, tmp_path):
    assert parse_layer_list("all", 4) == (0, 1, 2, 3)
    assert parse_layer_list("0,2-3", 4) == (0, 2, 3)
    assert parse_layer_list("-1", 12) == (11,)               # the last layer
    assert parse_layer_list("-3--1, 0", 12) == (0, 9, 10, 11)
    for bad, expected in [("12", "--layers: layer 12 out of range: the model has layers 0..11"),
                          ("-13", "--layers: layer -13 out of range: the model has layers 0..11"),
                          ("5-3", "--layers: expected a range low-high, got '5-3'"),
                          ("a,b", "--layers: expected 'all' or a list like 0,2,5-7, got 'a,b'")]:
        with pytest.raises(actdb.InputError) as e:
            parse_layer_list(bad, 12)
        assert str(e.value) == expected
    # the index reads the same grammar over the model's layers (4 in the known store, 0-2 recorded)
    p = copy(built, tmp_path / "s")
    r = CliRunner().invoke(main, ["index", str(p), "--layers", "-2", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert read_index_info(p).config.ngram_layers == (2,)
    r = CliRunner().invoke(main, ["index", str(p), "--layers", "-1", "--no-progress"])
    assert one_line_error(r) == "Error: --layers: expected recorded layers [0, 1, 2], got [3]"
    r = CliRunner().invoke(main, ["index", str(p), "--layers", "7", "--no-progress"])
    assert one_line_error(r) == "Error: --layers: layer 7 out of range: the model has layers 0..3"
    from actdb.ingest import pipeline

    assert pipeline.parse_layer_list is parse_layer_list


# ---------------------------------------------------------------- atomic --force

def _corrupt_one_mask_chunk(p: Path) -> Path:
    chunks = sorted(f for f in (p / "masks" / "layer_01").rglob("*") if f.is_file() and f.name != "zarr.json")
    victim = chunks[len(chunks) // 2]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    victim.write_bytes(bytes(raw))
    return victim


def test_failed_force_rebuild_leaves_the_old_index_answering(built, tmp_path):
    p = copy(built, tmp_path / "s")
    before = answers(p)
    record = (p / "index" / "index.json").read_bytes()
    victim = _corrupt_one_mask_chunk(p)
    r = CliRunner().invoke(main, ["index", str(p), "--force", "--no-progress"])
    line = one_line_error(r)
    assert "layer_01" in line and "internal error" not in line, line
    assert (p / "index" / "index.json").read_bytes() == record
    assert answers(p) == before                       # a new handle answers from the old index
    assert (p / "_index_build").exists()              # the half-built rebuild, until the next build
    shutil.copy(built / "masks" / "layer_01" / victim.relative_to(p / "masks" / "layer_01"), victim)
    r = CliRunner().invoke(main, ["index", str(p), "--no-progress"])   # complete and current: kept as is
    assert r.exit_code == 0 and not (p / "_index_build").exists(), r.output
    assert (p / "index" / "index.json").read_bytes() == record


@pytest.mark.slow
def test_rebuild_swaps_with_and_without_an_atomic_exchange(built, tmp_path, monkeypatch):
    """The new index replaces the old whole, with renameat2's exchange and with the rename fallback;
    nothing of the build is left beside it."""
    import actdb.index.build as ix

    for exchange in (True, False):
        p = copy(built, tmp_path / f"s{exchange}")
        if not exchange:
            monkeypatch.setattr(ix, "exchange_dirs", lambda a, b: False)
        build_index(p, progress=False, force=True, top_k=3)
        assert read_index_info(p).config.top_k == 3
        assert actdb.open(p).sql("SELECT max(rank) FROM neuron_tokens").item() == 3
        assert sorted(f.name for f in p.iterdir()) == sorted(f.name for f in built.iterdir())
        assert answers(p) == answers(built)


def test_swap_killed_between_renames_recovers(built, tmp_path):
    """Without an atomic exchange a kill can fall between the two renames: the next build puts the
    complete index back (the new one if it was complete) and cleans up."""
    from actdb.index.build import _recover

    p = copy(built, tmp_path / "s")
    (p / "index").rename(p / "_index_old")
    (p / "_index_build").mkdir()                       # an unfinished new one: not used
    _recover(p)
    assert (p / "index" / "index.json").exists() and not (p / "_index_old").exists()
    assert not (p / "_index_build").exists() and answers(p) == answers(built)


@pytest.mark.slow
def test_sigkill_during_force_rebuild_old_index_answers(built, tmp_path):
    """`actdb index --force` killed at seeded fault points of the rebuild (actdb.faults: inside an
    atomic write, after one, after a unit): the old index answers after every kill, and a final
    rebuild completes it."""
    p = copy(built, tmp_path / "s")
    before = answers(p)
    build = p / "_index_build"
    cmd = [ACTDB, "index", str(p), "--force", "--no-progress", "--workers", "1", "--memory-mb", "0.001"]
    r = run_to_fault(cmd, trace=tmp_path / "trace")   # a rebuild over the same index, traced
    assert r.returncode == 0, r.stderr
    record = (p / "index" / "index.json").read_bytes()
    points = [f for f, _ in traced_points(tmp_path / "trace", before="index.json")]
    rng = random.Random(5)
    for fault in sorted(rng.sample(points, 3), key=points.index):
        proc = run_to_fault(cmd, fault=fault)
        assert proc.returncode == -signal.SIGKILL, (fault, proc.stderr)
        assert build.exists()
        assert (p / "index" / "index.json").read_bytes() == record
        assert answers(p) == before
    r = subprocess.run([ACTDB, "index", str(p), "--force", "--no-progress"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not build.exists() and answers(p) == before
