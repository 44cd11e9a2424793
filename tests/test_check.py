"""`actdb check` and damaged stores: every damage is found and named by its path, with a
non-zero exit, and no read path answers a damaged store with numbers."""
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
from actdb.files import file_digest
from records import record_files, rewrite_record
from stores import run_ingest

ACTDB = str(Path(sys.executable).with_name("actdb"))


@pytest.fixture(scope="module")
def pristine(model_dirs, corpus_file, tmp_path_factory):
    """A tiny OPT store with several blocks, capture, projection and its index."""
    root = tmp_path_factory.mktemp("check") / "s"
    run_ingest(model_dirs("opt"), corpus_file, root, block_tokens=64, index=True)
    return root


@pytest.fixture
def store(pristine, tmp_path):
    dst = tmp_path / "s"
    shutil.copytree(pristine, dst)
    return dst


def check(path) -> tuple[int, str]:
    res = CliRunner().invoke(main, ["check", str(path)])
    assert "Traceback" not in res.output, res.output
    return res.exit_code, res.output


def problems(out: str) -> list[str]:
    return [l.removeprefix("problem  ") for l in out.splitlines() if l.startswith("problem  ")]


def flip(path: Path, at: float = 0.5) -> None:
    b = bytearray(path.read_bytes())
    b[int(len(b) * at)] ^= 0x10
    path.write_bytes(bytes(b))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])


def a_chunk(root: Path, layer: int = 1) -> Path:
    files = [p for p in (root / "masks" / f"layer_{layer:02d}" / "c").rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


def test_clean_store_passes_and_every_file_is_recorded(pristine):
    code, out = check(pristine)
    assert code == 0 and problems(out) == [] and out.splitlines()[-1].endswith("; ok"), out
    recorded = json.loads((pristine / "checksums.json").read_text())["files"]
    on_disk = {p.relative_to(pristine).as_posix() for p in pristine.rglob("*")
               if p.is_file() and p.relative_to(pristine).parts[0] != "index"}
    assert set(recorded) == on_disk - {"manifest.json", "checksums.json"}
    assert any(k.startswith("masks/layer_00/c/") for k in recorded) and "tokens/part-000002.parquet" in recorded
    for rel, want in recorded.items():  # the records are of the files as they are
        assert file_digest(pristine / rel) == want, rel


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_mask_chunk(damage, store):
    chunk = a_chunk(store)
    {"flip": flip, "truncate": truncate, "delete": Path.unlink}[damage](chunk)
    code, out = check(store)
    assert code != 0 and any(p.startswith(f"{chunk}: ") for p in problems(out)), out
    # the Python read path raises, naming the chunk, instead of returning other bits
    st = actdb.open(store)
    with pytest.raises(actdb.StoreError, match=f"{chunk}: .*(corrupt|missing|sha256 differs)"):
        st.neuron_masks(1, slice(None))
    # the other layers still read
    assert st.neuron_masks(0, slice(None)).shape[1] == st.n_tokens


@pytest.mark.slow
def test_index_build_over_a_corrupt_chunk_names_it(store):
    """Rebuilding the index over a bit-flipped chunk stops with one line naming the file
    (through the CLI, whatever the index's internals)."""
    chunk = a_chunk(store)
    flip(chunk)
    res = subprocess.run([ACTDB, "index", str(store), "--force", "--no-progress"], capture_output=True, text=True)
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
    assert str(chunk) in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_deleted_token_part(store):
    part = store / "tokens" / "part-000001.parquet"
    part.unlink()
    code, out = check(store)
    assert code != 0 and any(p.startswith(f"{part}: ") for p in problems(out)), out
    with pytest.raises(actdb.StoreError, match="missing part-000001.parquet"):
        actdb.open(store)
    res = CliRunner().invoke(main, ["sql", str(store), "SELECT count(*) FROM tokens"])
    assert res.exit_code != 0 and "missing part-000001.parquet" in res.output and "Traceback" not in res.output


def test_extra_token_part_and_leftover_tmp(store):
    shutil.copy(store / "tokens" / "part-000000.parquet", store / "tokens" / "part-000099.parquet")
    (store / "masks" / "layer_00" / "c" / ".x.partial").write_bytes(b"x")
    code, out = check(store)
    assert code != 0
    assert any("part-000099.parquet: " in p for p in problems(out)), out
    assert not any(".x.partial" in p for p in problems(out)) and ".x.partial: temporary file" in out


@pytest.mark.parametrize("target,damage", [
    ("tokens/part-000002.parquet", "flip"), ("docs.parquet", "truncate"), ("vocab.parquet", "flip"),
    ("projection.safetensors", "truncate"), ("capture/resid_topk_value/c/0/1/0", "flip"),
    ("masks/layer_02/zarr.json", "delete"),
])
def test_damaged_files_are_named(target, damage, store):
    p = store / target
    assert p.exists(), target
    {"flip": flip, "truncate": truncate, "delete": Path.unlink}[damage](p)
    code, out = check(store)
    assert code != 0 and any(x.startswith(f"{p}: ") for x in problems(out)), out


def test_manifest_newer_version_and_garbage(store):
    text = (store / "manifest.json").read_text()
    (store / "manifest.json").write_text(text.replace('"n_tokens": ', '"n_tokens": 1', 1))
    code, out = check(store)
    assert code != 0 and "manifest.json: checksum differs from the record's content" in out
    rewrite_record(store / "manifest.json", lambda raw: {**raw, "format_version": 7})
    code, out = check(store)
    assert code != 0 and "format_version: expected 1 or 2 or 3 or 4, got 7 (written by a newer actdb" in out
    res = CliRunner().invoke(main, ["info", str(store)])
    assert res.exit_code != 0 and "newer actdb" in res.output and "Traceback" not in res.output
    (store / "manifest.json").write_bytes(b"\x00\xff{")
    code, out = check(store)
    assert code != 0 and "manifest.json: not UTF-8" in out


def test_checksum_record_tampered(store):
    p = store / "checksums.json"
    p.write_text(p.read_text().replace('"bytes": ', '"bytes": 1', 1))
    code, out = check(store)
    assert code != 0 and f"{p}: sha256 differs from the one in the manifest" in out


def test_row_counts_across_tables(store):
    """A table rewritten consistently with its own checksum (so only the cross-table check
    can see it): docs.parquet with a row missing."""
    import pyarrow.parquet as pq

    docs = store / "docs.parquet"
    t = pq.read_table(docs)
    pq.write_table(t.slice(0, t.num_rows - 1), docs)
    record_files(store, [docs])
    code, out = check(store)
    # the index, built from the store as it was, is no longer this store's either
    found = problems(out)
    assert len(found) == 2 and found[0] == f"{docs}: rows: expected {t.num_rows} (n_docs), got {t.num_rows - 1}", out
    assert found[1].startswith(f"{store / 'index'}: not this store's index: store: built for the store "), out


def test_index_missing_stale_and_its_files(store):
    info_p = store / "index" / "index.json"
    info = json.loads(info_p.read_text())
    # the files index.json records (relative to index/) are verified; recorded here if the build did not
    assert info["files"] and check(store)[0] == 0
    victim = store / "index" / sorted(info["files"])[0]
    flip(victim, 0.3)
    code, out = check(store)
    assert code != 0 and any(p.startswith(f"{victim}: sha256 differs") for p in problems(out)), out
    # a record edited by hand is refused; one built for another store (checksum and all) is named so
    info_p.write_text(info_p.read_text().replace('"n_tokens": ', '"n_tokens": 1', 1))
    code, out = check(store)
    assert code != 0 and "index.json: checksum differs from the record's content" in out
    rewrite_record(info_p, lambda raw: {**raw, "config": {**raw["config"], "n_tokens": 5}})
    code, out = check(store)
    assert code != 0 and "not this store's index: n_tokens: built for 5" in out
    rewrite_record(info_p, lambda raw: {**raw, "config": {**info["config"], "store": "sha256:" + "0" * 64}})
    code, out = check(store)
    assert code != 0 and "not this store's index: store: built for the store sha256:000" in out
    shutil.rmtree(store / "index")
    code, out = check(store)
    assert code != 0 and f"{store / 'index'}: no query index (build it with `actdb index" in out


def test_unfinished_and_missing_store(tmp_path, model_dirs, corpus_file):
    code, out = check(tmp_path / "nope")
    assert code != 0 and "no such store" in out
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "ingest-state.json").write_text("{}")
    code, out = check(tmp_path / "half")
    assert code != 0 and "ingest not finished" in out


def test_store_without_checksums_is_verified_by_decoding(tmp_path):
    """Stores written without a checksum record (older actdb, hand-built ones) are still
    checked: every chunk decoded, every Parquet file read."""
    from actdb.store.synthetic import write_store

    rng = np.random.default_rng(0)
    n = 200
    root = write_store(tmp_path / "syn", rng.integers(0, 20, n), [16] * 12 + [8], lambda l, a, b: rng.random((24, b - a)) < 0.3,
                       layers=(0, 1), n_layers=2, d_ffn=24, seq_len=16, vocab=[f"w{i}" for i in range(20)],
                       block_tokens=64, neuron_chunk=8)
    # as an older actdb wrote it: a format 3 manifest, without its checksum or checksums.json
    (root / "checksums.json").unlink()
    raw = json.loads((root / "manifest.json").read_text())
    raw.pop("checksum")
    (root / "manifest.json").write_text(json.dumps({**raw, "format_version": 3, "checksums_sha256": ""}))
    code, out = check(root)
    assert problems(out) == [f"{root / 'index'}: no query index (build it with `actdb index {root}`)"], out
    assert "no checksums recorded" in out
    chunk = a_chunk(root, 0)
    flip(chunk)
    code, out = check(root)
    assert code != 0 and any(p.startswith(f"{chunk}: unreadable") for p in problems(out)), out
