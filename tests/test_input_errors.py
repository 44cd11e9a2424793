"""Bad input on the ingest side: bounded tokenizing of huge inputs, and plain
one-line messages for causes a user can fix (see also test_cli_errors.py, test_offload.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import actdb
from actdb.errors import InputError
from actdb.ingest.corpus import (Document, SpecialTokens, doc_token_limit, read_documents, sequences,
                                 tokenize_documents)
from cli_runner import ingest, one_error_line, run
from tiny import WORDS

ACTDB = str(Path(sys.executable).with_name("actdb"))
PROPS = settings(max_examples=80, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


# ------------------------------------------------------------------ 18.6 bounded tokenizing

def _peak_rss_mb(args: list[str]) -> tuple[float, str]:
    """Run a command; its own peak RSS (wait4's rusage: this child only) and its output."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    return usage.ru_maxrss / 1024, out


@pytest.mark.slow
def test_huge_one_line_text_with_a_small_budget_reads_and_tokenizes_only_what_it_needs(model_dirs, tmp_path):
    """A 20 MB text file on one line (about 3.5M tokens) with --max-tokens 2000: before, it was
    read, decoded and tokenized whole (2.6 GB peak, 4x the time of a small file). Now its peak
    RSS is that of the same ingest over a 100 kB head of it, give or take far less than the
    whole document's tokens would take, and both stores hold the same tokens."""
    import random

    rng = random.Random(5)
    words = " ".join(rng.choice(WORDS) for _ in range(100_000)) + " "
    huge, head = tmp_path / "huge.txt", tmp_path / "head.txt"
    with open(huge, "w") as f:
        while f.tell() < 20_000_000:
            f.write(words)
    head.write_text(words[:100_000])
    assert "\n" not in words
    peaks = {}
    for name, corpus in (("head", head), ("huge", huge)):
        peaks[name], out = _peak_rss_mb([ACTDB, "ingest", str(model_dirs("opt")), str(corpus), "-o",
                                         str(tmp_path / name), "--seq-len", "16", "--max-tokens", "2000",
                                         "--domain", "prose", "--no-progress", "--no-index"])
        assert "tokens     2,000 in 125 sequences from 1 documents" in out, out
    # the whole document's ids alone, as Python ints in lists, would be > 100 MB; its
    # tokenizer encoding several times that
    assert peaks["huge"] - peaks["head"] < 100, peaks
    assert actdb.open(tmp_path / "huge").tokens().equals(actdb.open(tmp_path / "head").tokens())


def test_pieces_rejoin_to_the_text_and_cut_before_a_word():
    text = "alpha beta  gamma\n\ndelta " + "x" * 50 + " omega"
    for size in (1, 3, 7, 12, 30, 1000):
        pieces = list(Document(text, "d", "i", "s").pieces(size))
        assert "".join(pieces) == text and all(0 < len(p) <= size for p in pieces)
        for a, b in zip(pieces, pieces[1:]):
            # a cut falls before the last whitespace ahead of a word, or (no such place) at size
            assert (b[0].isspace() and b[1:2] and not b[1].isspace()) or len(a) == size, (size, pieces)
    assert list(Document(text, "d", "i", "s").pieces(12))[:3] == ["alpha beta ", " gamma\n", "\ndelta"]


@PROPS
@given(words=st.lists(st.sampled_from(["a", "bc", "def", " ", "  ", "\n", "\t", "é", "\U0001f600"]), max_size=60),
       size=st.integers(1, 20))
def test_pieces_any_text(words, size):
    text = "".join(words)
    pieces = list(Document(text, "d", "i", "s").pieces(size))
    assert "".join(pieces) == text and all(0 < len(p) <= size for p in pieces)


def test_tokenizing_in_pieces_equals_whole_for_a_whitespace_tokenizer(model_dirs):
    """The tiny models' word-level tokenizer splits at whitespace, so cutting before whitespace
    changes nothing: a 300k-character document in 5 pieces gives the ids of one call."""
    from transformers import AutoTokenizer

    import random

    tok = AutoTokenizer.from_pretrained(model_dirs("opt"))
    rng = random.Random(1)
    text = " ".join(rng.choice(WORDS) for _ in range(60_000))
    assert len(text) > 4 * (1 << 16)
    docs = [Document("a short one", "d", "0", "s"), Document(text, "d", "1", "s"), Document("the end", "d", "2", "s")]
    got = [ids for _, ids in tokenize_documents(docs, tok)]
    want = [tok(d.text, add_special_tokens=False)["input_ids"] for d in docs]
    assert got == want
    # with a per-document limit, each document gives its first ids only
    got = [ids for _, ids in tokenize_documents(docs, tok, max_doc_tokens=5)]
    assert got == [w[:5] for w in want]


specials = st.sampled_from([SpecialTokens((), (), None), SpecialTokens((1,), (), 9), SpecialTokens((1,), (3,), 3),
                            SpecialTokens((), (), 0), SpecialTokens((), (4,), None)])


@PROPS
@given(lengths=st.lists(st.integers(0, 60), max_size=8), sp=specials, seq_len=st.integers(3, 20),
       mode=st.sampled_from(["packed", "document"]), budget=st.one_of(st.none(), st.integers(1, 200)))
def test_doc_token_limit_never_changes_the_sequences(lengths, sp, seq_len, mode, budget):
    """Tokenizing stops after doc_token_limit ids of a document; the sequences are exactly those
    of the whole documents, the shorter last sequence and the budget cut included."""
    docs = [(i, list(range(1000 * (i + 1), 1000 * (i + 1) + n))) for i, n in enumerate(lengths)]
    limit = doc_token_limit(sp, seq_len, mode, budget)
    cut = [(i, ids[:limit] if limit is not None else ids) for i, ids in docs]
    full_cut, part_cut = {}, {}
    want = [(s.tokens.tolist(), s.docs.tolist()) for s in sequences(docs, sp, seq_len, mode, budget, full_cut)]
    got = [(s.tokens.tolist(), s.docs.tolist()) for s in sequences(cut, sp, seq_len, mode, budget, part_cut)]
    assert got == want and part_cut == full_cut


@pytest.mark.parametrize("tail", [b"\xc3\xa9 fine \xff", b"\xc3\xff", b"ab\n\n\xe2\x82"])
def test_streamed_text_file_names_a_bad_byte_as_reading_it_whole_did(tmp_path, tail):
    """Past the first block, with a character split across the block boundary: the same
    line and byte offset as decoding the whole file (the old reader) named."""
    from actdb.ingest.corpus import READ_BLOCK

    p = tmp_path / "big.txt"
    body = ("word " * 40 + "\n").encode() * (READ_BLOCK // 201)
    body += b"x" * (READ_BLOCK - len(body) - 1)  # the tail's first byte ends the first block
    data = body + tail + b" end\n" * 3
    p.write_bytes(data)
    with pytest.raises(UnicodeDecodeError) as whole:
        data.decode("utf-8")
    line = data.count(b"\n", 0, whole.value.start) + 1
    (doc,) = read_documents([p])
    assert not isinstance(doc.content, str), "a file larger than one block is streamed"
    with pytest.raises(InputError, match=rf"big.txt:{line}: not valid UTF-8 \(byte offset {whole.value.start}\)$"):
        list(doc.pieces())


def test_streamed_text_file_reads_back_exactly(tmp_path):
    from actdb.ingest.corpus import READ_BLOCK

    text = ("caf\u00e9 \U0001f600 line\r\n" * (READ_BLOCK // 10))
    p = tmp_path / "ok.txt"
    p.write_text(text, encoding="utf-8", newline="")
    (doc,) = read_documents([p])
    assert not isinstance(doc.content, str)
    assert "".join(doc.pieces()) == doc.text == text


# ------------------------------------------------------------------ 18.8 corpus messages

def test_missing_text_says_missing(model_dirs, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "the city"}\n{"body": "x"}\n')
    code, out = ingest(model_dirs("opt"), bad, out=tmp_path / "s")
    assert code != 0 and f"{bad}:2: expected a string field 'text', it is missing" in one_error_line(out)
    bad.write_text('{"text": null}\n')
    assert "got null" in one_error_line(ingest(model_dirs("opt"), bad, out=tmp_path / "s2")[1])
    pbad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"text": ["the city", None]}), pbad)
    code, out = ingest(model_dirs("opt"), pbad, out=tmp_path / "s3")
    assert code != 0 and f"{pbad}: row 1: expected a string 'text', it is missing" in one_error_line(out)


@pytest.mark.parametrize("value,shown", [(5, "a number"), (["x"], "an array"), (True, "a boolean")])
def test_jsonl_domain_must_be_a_string(value, shown, model_dirs, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "the city", "domain": "code"}) + "\n"
                   + json.dumps({"text": "a river", "domain": value}) + "\n")
    code, out = ingest(model_dirs("opt"), bad, out=tmp_path / "s")
    assert code != 0 and f"{bad}:2: expected a string field 'domain', got {shown}" in one_error_line(out)


def test_parquet_domain_must_be_a_string_and_null_domain_is_the_default(model_dirs, tmp_path):
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"text": ["the city", "a river"], "domain": [3, 4]}), bad)
    code, out = ingest(model_dirs("opt"), bad, out=tmp_path / "s")
    assert code != 0 and f"{bad}: row 0: expected a string 'domain', got int" in one_error_line(out)
    good = tmp_path / "c.jsonl"
    good.write_text('{"text": "the city", "domain": null}\n{"text": "a river", "domain": "law"}\n')
    assert [d.domain for d in read_documents([good])] == ["c", "law"]


# ------------------------------------------------------------------ 18.7 / 18.8 ingest settings

@pytest.mark.slow
def test_max_tokens_below_one_sequence_says_the_budget_is_cut(model_dirs, corpus_file, tmp_path):
    code, out = ingest(model_dirs("opt"), corpus_file, out=tmp_path / "s", extra=["--max-tokens", "10"])
    line = one_error_line(out)
    assert code != 0 and ("--max-tokens 10: the budget is cut to whole sequences, and the first sequence has 16 "
                          "tokens: expected at least 16") in line, line
    code, out = ingest(model_dirs("opt"), corpus_file, out=tmp_path / "s2", extra=["--max-tokens", "100", "--no-index"])
    assert code == 0 and "tokens     96 in 6 sequences" in out and "(--max-tokens 100, cut to whole sequences)" in out, out
    code, out = ingest(model_dirs("opt"), corpus_file, out=tmp_path / "s3", extra=["--max-tokens", "96", "--no-index"])
    assert code == 0 and "tokens     96 in 6 sequences" in out and "cut to whole" not in out, out


@pytest.mark.parametrize("family", ["opt", "llama", "gpt2"])
def test_seq_len_above_the_models_positions_is_refused_before_any_work(family, model_dirs, corpus_file, tmp_path):
    code, out = run("ingest", model_dirs(family), corpus_file, "-o", tmp_path / "s", "--seq-len", "129", "--no-progress")
    line = one_error_line(out)
    assert code != 0 and "--seq-len: expected at most 128 (the model's maximum positions), got 129" in line, line
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_ingest_prints_no_torch_dtype_deprecation(model_dirs, corpus_file, tmp_path):
    """Reading config.torch_dtype (a config.json without "dtype") logged
    "`torch_dtype` is deprecated! Use `dtype` instead!" on every ingest."""
    import shutil

    mdir = tmp_path / "m"
    shutil.copytree(model_dirs("opt"), mdir)
    cfg = json.loads((mdir / "config.json").read_text())
    cfg.pop("dtype", None)
    cfg.pop("torch_dtype", None)
    (mdir / "config.json").write_text(json.dumps(cfg))
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "warning", "PYTHONWARNINGS": "always"}
    res = subprocess.run([ACTDB, "ingest", str(mdir), str(corpus_file), "-o", str(tmp_path / "s"), "--seq-len", "16",
                          "--no-progress", "--no-index"], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert "torch_dtype" not in res.stderr + res.stdout, res.stderr


# ------------------------------------------------------------------ 18.7 disk full: projection

def _same_stores(a, b) -> None:
    assert a.tokens().equals(b.tokens())
    for layer in b.manifest.layers:
        assert np.array_equal(a.masks(layer), b.masks(layer)), f"layer {layer}"
    assert (a.path / "projection.safetensors").read_bytes() == (b.path / "projection.safetensors").read_bytes()


@pytest.mark.slow
def test_disk_full_while_writing_the_projection_is_one_line_and_resumes(model_dirs, corpus_file, tmp_path, monkeypatch):
    """safetensors reports a failed write as SafetensorError("... (os error 28)"), which was an
    "internal error"; now it is the disk-full line of any other write, and --resume finishes."""
    import safetensors.torch
    from safetensors import SafetensorError

    from stores import run_ingest

    real = safetensors.torch.save_file

    def disk_full(tensors, filename, *args, **kwargs):
        if "projection" in str(filename):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    out = tmp_path / "s"
    with pytest.raises(actdb.StoreError, match=r"No space left on device \(.*projection\.safetensors\); "
                                               r"the store can be resumed with --resume") as e:
        run_ingest(model_dirs("opt"), corpus_file, out, block_tokens=64)
    assert "\n" not in str(e.value)
    assert not (out / "projection.safetensors").exists() and not list(out.glob(".projection*"))
    monkeypatch.undo()
    run_ingest(model_dirs("opt"), corpus_file, out, block_tokens=64, resume=True)
    _same_stores(actdb.open(out), run_ingest(model_dirs("opt"), corpus_file, tmp_path / "ref", block_tokens=64))


@pytest.mark.slow
def test_real_write_error_of_the_projection_in_a_real_process(model_dirs, corpus_file, tmp_path):
    """A file size limit (EFBIG) that only the projection exceeds, in a real `actdb ingest`: the
    real SafetensorError text, turned into one line on stderr."""
    import resource
    import signal

    from stores import run_ingest

    ref = run_ingest(model_dirs("opt"), corpus_file, tmp_path / "ref", block_tokens=64)
    limit = (ref.path / "projection.safetensors").stat().st_size // 2
    later = ("projection.safetensors", "checksums.json", "manifest.json", "masks", "capture", "index")
    earlier = [p for p in ref.path.rglob("*") if p.is_file() and p.relative_to(ref.path).parts[0] not in later]
    assert max(p.stat().st_size for p in earlier) < limit and ref.manifest.n_tokens * 4 < limit  # + staging ids

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG from write() instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = tmp_path / "s"
    res = subprocess.run([ACTDB, "ingest", str(model_dirs("opt")), str(corpus_file), "-o", str(out), "--seq-len", "24",
                          "--batch-size", "3", "--block-tokens", "64", "--no-progress", "--no-index"],
                         capture_output=True, text=True, preexec_fn=small_files)
    err = [l for l in res.stderr.splitlines() if l.startswith("Error:")]
    assert res.returncode != 0 and len(err) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "internal error" not in err[0] and "File too large" in err[0], err[0]
    assert "projection.safetensors" in err[0] and "--resume" in err[0], err[0]


# ------------------------------------------------------------------ 18.7 / 18.8 after ingest: index, plot, neuron

@pytest.fixture(scope="module")
def store(model_dirs, corpus_file, tmp_path_factory):
    """A complete tiny OPT store with its index (module-wide: these tests only read it, or copy it)."""
    path = tmp_path_factory.mktemp("readers") / "s"
    code, out = ingest(model_dirs("opt"), corpus_file, out=path)
    assert code == 0, out
    return path


def test_negative_layer_or_neuron_is_refused_by_range_not_as_an_option(store):
    code, out = run("neuron", store, "-1", "0")
    line = one_error_line(out)
    assert code != 0 and "No such option" not in out and "layer -1: not recorded in store" in line \
        and "(recorded layers: 0, 1, 2)" in line
    code, out = run("neuron", store, "0", "-1", "--top", "3")
    assert code != 0 and "neuron 0:-1: not in store" in one_error_line(out) and "(neurons 0..47)" in out
    code, out = run("neuron", store, "--top", "3", "0", "5")
    assert code == 0 and out.startswith("neuron 0:5 of"), out
    code, out = run("neuron", store, "0", "5", "--no-such-flag")
    assert code != 0 and "--no-such-flag" in out  # unknown options are still refused, by click


def test_plot_output_of_the_wrong_kind(store, tmp_path):
    folder = tmp_path / "figs"
    folder.mkdir()
    code, out = run("plot", store, "fig2", "-o", folder)
    assert code != 0 and f"-o {folder}: is a folder; expected a PNG file" in one_error_line(out)
    afile = tmp_path / "f.png"
    afile.write_bytes(b"not mine to replace by a folder")
    code, out = run("plot", store, "all", "-o", afile)
    assert code != 0 and f"-o {afile}: is a file; expected a folder for 'all'" in one_error_line(out)
    assert afile.read_bytes() == b"not mine to replace by a folder" and list(folder.iterdir()) == []


def _unshare_works() -> bool:
    probe = ["unshare", "-m", "sh", "-c", "mount --bind / / && mount -o remount,ro,bind / /"]
    try:
        return subprocess.run(probe, capture_output=True).returncode == 0
    except OSError:
        return False


def _run_read_only(folder: Path, *args: str) -> tuple[int, str]:
    """`actdb ARGS` with `folder` read-only for real (EROFS): a bind mount in a private mount
    namespace of that one process (chmod does not stop root, whom the tests run as)."""
    script = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && exec "$@"'
    res = subprocess.run(["unshare", "-m", "sh", "-c", script, str(folder), ACTDB, *args],
                         capture_output=True, text=True)
    assert "Traceback" not in res.stderr, res.stderr
    return res.returncode, res.stderr


@pytest.mark.slow
@pytest.mark.skipif(not _unshare_works(), reason="needs unshare -m and mount (a private read-only bind mount)")
def test_read_only_store_and_output_folder_for_real(store, tmp_path):
    import shutil

    ro = tmp_path / "ro"
    shutil.copytree(store, ro / "s")
    before = {p: p.read_bytes() for p in (ro / "s" / "index").rglob("*") if p.is_file()}
    code, err = _run_read_only(ro, "index", str(ro / "s"), "--force", "--no-progress")
    line = one_error_line(err)
    # the writer lock is the first write an index build makes (store/lock.py)
    assert code != 0 and f"{ro / 's'}: cannot take the writer lock (Read-only file system)" in line, err
    assert {p: p.read_bytes() for p in (ro / "s" / "index").rglob("*") if p.is_file()} == before
    # a figure drawn from a read-only store to a writable place works; into a read-only folder is one line
    code, err = _run_read_only(ro, "plot", str(ro / "s"), "fig2", "-o", str(tmp_path / "f.png"))
    assert code == 0 and (tmp_path / "f.png").exists(), err
    code, err = _run_read_only(ro, "plot", str(ro / "s"), "fig2", "-o", str(ro / "f.png"))
    assert code != 0 and f"{ro / 'f.png'}: cannot write the figure (Read-only file system)" in one_error_line(err)
    code, err = _run_read_only(ro, "plot", str(ro / "s"), "all", "-o", str(ro / "figs"))
    assert code != 0 and "cannot write the figure (Read-only file system)" in one_error_line(err)


def test_unwritable_store_and_output_folder_simulated(store, tmp_path, monkeypatch):
    """The same paths where no mount namespace is to be had: every folder creation under the
    read-only place fails with EACCES, as it does for a user without write permission."""
    import errno
    import pathlib
    import shutil

    ro = tmp_path / "ro"
    shutil.copytree(store, ro / "s")
    real_mkdir = pathlib.Path.mkdir

    def mkdir(self, *args, **kwargs):
        if str(self).startswith(str(ro)):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    code, out = run("index", ro / "s", "--force", "--no-progress")
    # a rebuild over a complete index is made beside it, in _index_build/ (the old one keeps answering)
    assert code != 0 and f"{ro / 's'}: cannot write the index: Permission denied ({ro / 's' / '_index_build'}" \
        in one_error_line(out)
    code, out = run("plot", store, "fig2", "-o", ro / "new" / "f.png")
    assert code != 0 and f"{ro / 'new' / 'f.png'}: cannot write the figure (Permission denied)" in one_error_line(out)
