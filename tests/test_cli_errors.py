"""Bad input: one clear line naming the problem, non-zero exit, no traceback, no store."""
import json

import pytest

from cli_runner import ingest, one_error_line, run


def test_missing_corpus_file(model_dirs, tmp_path):
    code, out = ingest(model_dirs("opt"), tmp_path / "nope.jsonl", out=tmp_path / "s")
    assert code != 0 and "nope.jsonl: corpus file not found" in one_error_line(out)
    assert not (tmp_path / "s").exists()


def test_malformed_jsonl_names_file_and_line(model_dirs, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "the city"}\n{"text": "a river"}\n{"text": "broken\n')
    code, out = ingest(model_dirs("opt"), bad, out=tmp_path / "s")
    assert code != 0 and f"{bad}:3: malformed JSON" in one_error_line(out)
    assert not (tmp_path / "s" / "manifest.json").exists()


def test_jsonl_without_text_field(model_dirs, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "the city"}\n{"body": "x"}\n')
    code, out = ingest(model_dirs("opt"), bad, out=tmp_path / "s")
    assert code != 0 and f"{bad}:2: expected a string field 'text'" in one_error_line(out)


def test_empty_document_is_an_error_unless_skipped(model_dirs, tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "the city of water"}\n{"text": "   "}\n{"text": "north and south"}\n')
    code, out = ingest(model_dirs("opt"), corpus, out=tmp_path / "s")
    assert code != 0 and f"{corpus}:2: empty document" in one_error_line(out)
    code, out = ingest(model_dirs("opt"), corpus, out=tmp_path / "s2", extra=["--skip-empty"])
    assert code == 0, out
    assert "from 2 documents" in out


def test_all_empty_corpus(model_dirs, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n")
    code, out = ingest(model_dirs("opt"), corpus, out=tmp_path / "s", extra=["--skip-empty"])
    assert code != 0 and "corpus gave no tokens" in one_error_line(out)


@pytest.mark.parametrize("suffix", [".jsonl", ".txt"])
def test_non_utf8_names_file_and_line(model_dirs, tmp_path, suffix):
    bad = tmp_path / f"latin1{suffix}"
    line1 = json.dumps({"text": "the city"}) if suffix == ".jsonl" else "the city"
    bad.write_bytes(line1.encode() + b"\n" + (b'{"text": "caf\xe9"}' if suffix == ".jsonl" else b"caf\xe9") + b"\n")
    code, out = ingest(model_dirs("opt"), bad, out=tmp_path / "s")
    assert code != 0 and f"{bad}:2: not valid UTF-8" in one_error_line(out)


def test_unknown_model(corpus_file, tmp_path):
    code, out = ingest("no-such-org/no-such-model", corpus_file, out=tmp_path / "s")
    assert code != 0 and "no-such-org/no-such-model: unknown model" in one_error_line(out)


def test_unsupported_architecture_lists_supported(model_dirs, corpus_file, tmp_path):
    from transformers import AutoConfig

    mdir = tmp_path / "neo"
    AutoConfig.for_model("gpt_neo", hidden_size=16, num_layers=2, num_heads=2,
                         attention_types=[[["global"], 2]]).save_pretrained(mdir)
    code, out = ingest(mdir, corpus_file, out=tmp_path / "s")
    line = one_error_line(out)
    assert code != 0 and "unsupported architecture 'gpt_neo'" in line and "opt" in line and "llama" in line


@pytest.mark.parametrize("layers,msg", [("7", "layer 7 out of range: the model has layers 0..2"),
                                        ("1,x", "expected 'all' or a list")])
def test_bad_layers(model_dirs, corpus_file, tmp_path, layers, msg):
    code, out = ingest(model_dirs("opt"), corpus_file, out=tmp_path / "s", extra=["--layers", layers])
    assert code != 0 and msg in one_error_line(out)


@pytest.mark.slow
def test_existing_store_needs_resume_or_overwrite(model_dirs, corpus_file, tmp_path):
    store = tmp_path / "s"
    assert ingest(model_dirs("opt"), corpus_file, out=store)[0] == 0
    assert (store / "index" / "index.json").exists(), "ingest builds the index by default"
    code, out = ingest(model_dirs("opt"), corpus_file, out=store)
    assert code != 0 and "store exists (pass --overwrite" in one_error_line(out)
    code, out = ingest(model_dirs("opt"), corpus_file, out=store, extra=["--resume"])
    assert code != 0 and "already complete" in one_error_line(out)
    code, out = ingest(model_dirs("opt"), corpus_file, out=store, extra=["--overwrite"])
    assert code == 0, out


def test_overwrite_refuses_a_folder_that_is_not_a_store(model_dirs, corpus_file, tmp_path):
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("keep me")
    code, out = ingest(model_dirs("opt"), corpus_file, out=precious, extra=["--overwrite"])
    assert code != 0 and "not an actdb store; refusing" in one_error_line(out)
    assert (precious / "chapter1.tex").read_text() == "keep me"


def test_bad_settings(model_dirs, corpus_file, tmp_path):
    code, out = ingest(model_dirs("opt"), corpus_file, out=tmp_path / "s", extra=["--block-tokens", "100"])
    assert code != 0 and "--block-tokens: expected a positive multiple of 8, got 100" in one_error_line(out)


def test_info_on_missing_and_incomplete_store(tmp_path):
    code, out = run("info", tmp_path / "none")
    assert code != 0 and "no such store" in one_error_line(out)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "ingest-state.json").write_text("{}")
    code, out = run("info", tmp_path / "half")
    assert code != 0 and "ingest not finished" in one_error_line(out)
