"""One integrity model on every read path: every file and record actdb reads is checked against a
record, the records carry their own checksums, an index answers only for the store it was built
from, and a reader sees one consistent store (or a clear error) across an overwrite or a rebuild.
Each case below was a way to get wrong numbers without a word."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import actdb
from actdb.cli import main
from actdb.index.build import build_index
from crash import run_to_fault, traced_points
from stores import run_ingest

ACTDB = str(Path(sys.executable).with_name("actdb"))
QUERIES = ["SELECT count(*), sum(fires) FROM neurons", "SELECT sum(n_covering) FROM coverage",
           "SELECT count(*) FROM token_detectors", "SELECT sum(fires) FROM neuron_tokens",
           "SELECT count(*), sum(token_id) FROM tokens"]


@pytest.fixture
def store(tiny_store_copy) -> Path:
    return tiny_store_copy


def answers(p: Path, rule: str | None = None) -> list:
    st = actdb.open(p, rule=rule)
    return [st.sql(q).rows() for q in QUERIES]


def flip(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x10
    path.write_bytes(bytes(data))


def chunks(p: Path, rule_dir: str = "") -> list[Path]:
    return sorted(f for f in (p / rule_dir / "masks" / "layer_01").rglob("*") if f.is_file() and f.name != "zarr.json")


def cli(*args: str) -> tuple[int, list[str]]:
    r = CliRunner().invoke(main, [*args])
    return r.exit_code, [line for line in r.output.splitlines() if line.strip()]


def one_line(code_lines: tuple[int, list[str]], *expected: str) -> str:
    code, lines = code_lines
    assert code != 0 and len(lines) == 1 and "Traceback" not in lines[0], lines
    for e in expected:
        assert e in lines[0], lines
    return lines[0]


# ---------------------------------------------------------------- read paths

@pytest.mark.slow
def test_masks_refuse_a_chunk_copied_from_another_store(store, model_dirs, corpus_file, tmp_path):
    """A chunk of another store has a valid crc32c: only its sha256 tells it apart."""
    other = run_ingest(model_dirs("opt"), corpus_file, tmp_path / "other", block_tokens=64, seq_len=16).path
    mine, theirs = chunks(store)[0], chunks(other)[0]
    assert mine.read_bytes() != theirs.read_bytes()
    shutil.copyfile(theirs, mine)
    with pytest.raises(actdb.StoreError, match=f"{mine}: sha256 differs from the one recorded"):
        actdb.open(store).masks(1)


def test_masks_refuse_a_chunk_nobody_recorded(tmp_path):
    """Where a block of a layer never fired no chunk is written (zarr reads zeros): a file put
    there is not read as if it were the store's."""
    from actdb.store.synthetic import write_store

    rng = np.random.default_rng(0)
    root = write_store(tmp_path / "syn", rng.integers(0, 20, 256), [16] * 16,
                       lambda l, a, b: (rng.random((8, b - a)) < 0.3) & (a < 64), layers=(0,), n_layers=1, d_ffn=8,
                       seq_len=16, vocab=[f"w{i}" for i in range(20)], block_tokens=64, neuron_chunk=8)
    layer = root / "masks" / "layer_00"
    assert (layer / "c" / "0" / "0").exists() and not (layer / "c" / "0" / "1").exists()
    assert not actdb.open(root).masks(0)[64:].any()
    shutil.copyfile(layer / "c" / "0" / "0", layer / "c" / "0" / "1")
    with pytest.raises(actdb.StoreError, match=f"{layer / 'c' / '0' / '1'}: chunk not recorded at write time"):
        actdb.open(root).masks(0)


@pytest.mark.parametrize("name", ["tokens/part-000001.parquet", "docs.parquet", "vocab.parquet"])
def test_python_reads_refuse_a_damaged_table(store, name):
    flip(store / name, 0.4)
    st = actdb.open(store)
    read = {"tokens": st.tokens, "docs.parquet": st.docs, "vocab.parquet": st.vocab}[name.split("/")[0]]
    with pytest.raises(actdb.StoreError, match=f"{store / name}: sha256 differs"):
        read()


def test_another_stores_docs_are_refused_by_the_explorer(store, model_dirs, corpus_file, tmp_path):
    from starlette.testclient import TestClient

    from actdb.serve.app import create_app, store_names

    other = run_ingest(model_dirs("opt"), corpus_file, tmp_path / "other", block_tokens=64, seq_len=16,
                       max_tokens=200).path
    shutil.copyfile(other / "docs.parquet", store / "docs.parquet")
    st = actdb.open(store)
    with TestClient(create_app([st]), base_url="http://127.0.0.1", raise_server_exceptions=False) as c:
        r = c.get(f"/s/{store_names([st])[0]}/doc/0")
        assert r.status_code >= 400 and "docs.parquet" in r.text and "Traceback" not in r.text


def test_read_parquet_of_another_rules_index_is_checked(store):
    target = store / "rules" / "top-0.9" / "index" / "neuron_fires.parquet"
    st = actdb.open(store)   # a handle on the sign rule reading the other rule's file
    sql = f"SELECT sum(fires) AS f FROM read_parquet('{target}')"
    good = st.sql(sql).item()
    original = target.read_bytes()
    flip(target, 0.3)
    with pytest.raises(actdb.StoreError, match=f"{target}: sha256 differs from the one recorded in"):
        actdb.open(store).sql(sql)
    target.write_bytes(original)
    # a Parquet file planted where no record lists it is not read either
    shutil.copyfile(store / "index" / "neuron_fires.parquet", store / "rules" / "top-0.9" / "index" / "extra.parquet")
    with pytest.raises(actdb.StoreError, match="extra.parquet: not recorded at write time"):
        actdb.open(store).sql(f"SELECT * FROM read_parquet('{store}/rules/*/index/*.parquet')")
    assert good > 0


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["swapped chunks", "token part"])
def test_index_rebuild_refuses_damaged_inputs(store, damage):
    if damage == "swapped chunks":
        a, b = chunks(store)[:2]
        da, db = a.read_bytes(), b.read_bytes()
        a.write_bytes(db)
        b.write_bytes(da)
        named = str(a)
    else:
        flip(store / "tokens" / "part-000002.parquet", 0.5)
        named = str(store / "tokens" / "part-000002.parquet")
    before = (store / "index" / "index.json").read_bytes()
    r = subprocess.run([ACTDB, "index", str(store), "--force", "--no-progress"], capture_output=True, text=True)
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and named in lines[0] and "sha256 differs" in lines[0], r.stderr
    assert (store / "index" / "index.json").read_bytes() == before   # the old index answers on


# ---------------------------------------------------------------- the index belongs to its store

@pytest.mark.slow
def test_an_index_copied_from_another_store_is_refused(store, model_dirs, corpus_file, tmp_path):
    """Same model, shape and tokens: only the store identity the index records tells them apart."""
    other = run_ingest(model_dirs("opt"), corpus_file, tmp_path / "other", block_tokens=64,
                       fire_rule=("sign", "top:0.95"), index=True).path
    assert actdb.open(other).manifest.n_tokens == actdb.open(store).manifest.n_tokens
    shutil.rmtree(store / "index")
    shutil.copytree(other / "index", store / "index")
    with pytest.raises(actdb.StoreError, match=r"index/index.json: not this store's index \(store: built for the "
                                               r"store sha256:.*rebuild it with `actdb index .* --force`"):
        actdb.open(store).sql("SELECT count(*) FROM neurons")
    code, out = cli("check", str(store))
    assert code != 0 and any("not this store's index: store: built for" in line for line in out), out
    build_index(store, progress=False)   # the plain rebuild makes it this store's again
    assert cli("check", str(store))[0] == 0


# ---------------------------------------------------------------- records carry their checksums

@pytest.mark.parametrize("record, edit", [
    ("manifest.json", lambda t: t.replace('"thresholds": [\n        0.', '"thresholds": [\n        1.', 1)),
    ("index/index.json", lambda t: t.replace('"p_cov": 0.95', '"p_cov": 0.96')),
    ("index/index.json", lambda t: json.dumps({**json.loads(t), "files": {
        k: v for i, (k, v) in enumerate(json.loads(t)["files"].items()) if i}}, indent=1)),
])
def test_an_edited_record_is_refused(store, record, edit):
    p = store / record
    text = p.read_text()
    p.write_text(edit(text))
    assert p.read_text() != text
    with pytest.raises(actdb.StoreError, match=f"{p}: checksum differs from the record's content"):
        actdb.open(store, rule="top:0.9" if record == "manifest.json" else None).sql("SELECT count(*) FROM neurons")
    one_line(cli("sql", str(store), "SELECT count(*) FROM neurons"), "checksum differs")


@pytest.mark.slow
def test_raised_blocks_done_is_refused_on_resume(model_dirs, corpus_file, tmp_path):
    """An ingest killed after its third block; the state's blocks_done raised by hand would leave
    blocks of zeros behind a resume: it is refused."""
    store = tmp_path / "s"
    cmd = [ACTDB, "ingest", str(model_dirs("opt")), str(corpus_file), "-o", str(store), "--seq-len", "24",
           "--block-tokens", "64", "--no-progress", "--no-index"]
    r = run_to_fault(cmd, fault="atomic-done:1", trace=None)   # killed after the first state write
    assert r.returncode < 0
    state = store / "ingest-state.json"
    state.write_text(state.read_text().replace('"blocks_done": 0', '"blocks_done": 3'))
    r = subprocess.run([*cmd, "--resume"], capture_output=True, text=True)
    assert r.returncode != 0 and "ingest-state.json: checksum differs" in r.stderr, r.stderr
    assert not (store / "manifest.json").exists()


@pytest.mark.slow
def test_a_flipped_staged_token_id_is_refused_on_resume(model_dirs, corpus_file, tmp_path):
    store = tmp_path / "s"
    cmd = [ACTDB, "ingest", str(model_dirs("opt")), str(corpus_file), "-o", str(store), "--seq-len", "24",
           "--block-tokens", "64", "--no-progress", "--no-index"]
    assert run_to_fault(cmd, trace=tmp_path / "trace").returncode == 0
    shutil.rmtree(store)
    # killed inside the forward passes: the staged ids are in place
    fault = next(f for f, _ in traced_points(tmp_path / "trace") if f.startswith("mask-layer"))
    assert run_to_fault(cmd, fault=fault).returncode < 0
    ids = store / "_staging" / "token_ids.i32"
    a = np.fromfile(ids, dtype=np.int32)
    a[5] = a[5] + 1
    a.tofile(ids)
    r = subprocess.run([*cmd, "--resume"], capture_output=True, text=True)
    assert r.returncode != 0 and f"{ids}: differs from the digest recorded in ingest-state.json" in r.stderr, r.stderr


@pytest.mark.slow
def test_a_unit_marked_done_too_many_is_not_trusted(store, tmp_path):
    """A first index build killed after three units, its index/_state.json then marking a fourth
    done: the build does not trust the edited state (its checksum), starts over, and gives the
    uninterrupted index."""
    before = answers(store)
    shutil.rmtree(store / "index")
    cmd = [ACTDB, "index", "--rule", "sign", "--no-progress", "--workers", "1", "--memory-mb", "0.001"]
    probe = Path(shutil.copytree(store, tmp_path / "probe"))
    assert run_to_fault([*cmd, str(probe)], trace=tmp_path / "trace").returncode == 0
    units = [(f, name) for f, name in traced_points(tmp_path / "trace") if f.startswith("unit-done")]
    assert len(units) >= 4
    assert run_to_fault([*cmd, str(store)], fault=units[2][0]).returncode < 0
    state_p = store / "index" / "_state.json"
    state = json.loads(state_p.read_text())
    assert sorted(state["done"]) == sorted(name for _, name in units[:2])   # the third's parts, unrecorded
    state["done"].append(units[3][1])   # its parts were never written
    state_p.write_text(json.dumps(state))
    r = subprocess.run([*cmd, str(store)], capture_output=True, text=True)
    assert r.returncode == 0 and "_state.json: checksum differs" in r.stderr and "starting the build over" in r.stderr
    assert answers(store) == before


# ---------------------------------------------------------------- one consistent store

@pytest.mark.slow
def test_a_handle_across_an_overwrite_says_so(store, model_dirs, corpus_file):
    st = actdb.open(store)
    first = st.masks(0)
    run_ingest(model_dirs("opt"), corpus_file, store, block_tokens=64, seq_len=16, overwrite=True)
    for read in (lambda: st.masks(0), st.tokens, lambda: st.sql("SELECT count(*) FROM tokens")):
        with pytest.raises(actdb.StoreError, match="written again or removed since this handle opened it"):
            read()
    assert actdb.open(store).masks(0).shape != first.shape


@pytest.mark.slow
def test_a_long_lived_handle_follows_a_rebuild(store):
    """`actdb index --force` with other thresholds swaps a new index in: a handle opened before
    answers from the new one at its next statement (what a running server sees), never a mix."""
    st = actdb.open(store)
    sql = "SELECT sum(n_covering) FROM coverage"
    old = st.sql(sql).item()
    r = subprocess.run([ACTDB, "index", str(store), "--force", "--no-progress", "--p-cov", "0.5"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    fresh = actdb.open(store).sql(sql).item()
    assert fresh != old
    assert st.sql(sql).item() == fresh
    assert st.generation == 1


@pytest.mark.slow
def test_a_running_server_picks_up_a_rebuild(store):
    """The explorer's pages (and their caches) follow a supported rebuild without a restart."""
    from starlette.testclient import TestClient

    from actdb.serve.app import create_app, store_names

    st = actdb.open(store)
    name = store_names([st])[0]
    layer, neuron = st.sql("SELECT layer, neuron FROM coverage WHERE n = 1 ORDER BY fires DESC LIMIT 1").row(0)
    url = f"/api/s/{name}/neuron/{layer}/{neuron}"

    def coverage(handle):
        return handle.sql("SELECT n, n_covering FROM coverage WHERE layer = $l AND neuron = $n ORDER BY n",
                          {"l": layer, "n": neuron}).rows()
    with TestClient(create_app([st]), base_url="http://127.0.0.1", raise_server_exceptions=False) as c:
        before = [(x["n"], x["n_covering"]) for x in c.get(url).json()["coverage"]]
        assert before == coverage(st)
        r = subprocess.run([ACTDB, "index", str(store), "--force", "--no-progress", "--p-cov", "0.5"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        after = c.get(url)
        assert after.status_code == 200, after.text[:300]
        got = [(x["n"], x["n_covering"]) for x in after.json()["coverage"]]
        assert got == coverage(actdb.open(store)) != before


def test_a_fifo_for_a_mask_chunk_is_refused_not_waited_on(store):
    """A chunk file that is a FIFO would make the read wait for a writer forever."""
    import os

    chunk = chunks(store)[0]
    chunk.unlink()
    os.mkfifo(chunk)
    code = "import sys, actdb\nactdb.open(sys.argv[1]).masks(1)"
    r = subprocess.run([sys.executable, "-c", code, str(store)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and f"{chunk}: unreadable (expected a regular file, got a FIFO)" in r.stderr, r.stderr
