"""Fire rules beyond the sign (abs>T, top:Q): every rule's masks equal a plain hooked forward that
computes the rule in numpy, for every family; top:Q thresholds equal np.quantile of the first
block; several rules resume and check; bad rules are one line."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

import actdb
from actdb.cli import main
from records import rewrite_record
from reference import reference_hidden, reference_masks, reference_rule_masks
from stores import FAMILIES, assert_same, run_ingest
from stores import interrupted as stop_ingest
from tiers import slow_except

RULES = ("sign", "abs>0.02", "top:0.9")
BLOCK = 64   # rows of the first block: it ends inside a batch (3 sequences of <= 24 tokens)


def ingest_rules(model_dir, corpus, out, rules=RULES, **kw):
    return run_ingest(model_dir, corpus, out, block_tokens=BLOCK, fire_rule=rules, **kw)


@pytest.mark.parametrize("family", slow_except(FAMILIES, "opt"))
def test_every_rule_equals_numpy_on_a_hooked_forward(family, model_dirs, corpus_file, tmp_path):
    store = ingest_rules(model_dirs(family), corpus_file, tmp_path / "s", mode="document")
    assert store.rules == RULES and store.rule == "sign"
    # the sign rule is what it always was, at the same paths
    assert_same(store, reference_masks(model_dirs(family), family, store, batch_size=3))
    assert (tmp_path / "s" / "masks" / "layer_00").is_dir()
    hidden = reference_hidden(model_dirs(family), family, store, batch_size=3)
    for rule in RULES[1:]:
        ref = reference_rule_masks(hidden, rule, BLOCK)
        assert_same(store.with_rule(rule), ref)
        assert (tmp_path / "s" / "rules" / rule.replace(">", "-gt-").replace(":", "-") / "masks").is_dir()
        freq = np.mean([ref[l].mean() for l in ref])
        assert 0.01 < freq < 0.99, f"{rule}: a rule that never or always fires makes the comparison vacuous"


@pytest.mark.slow
def test_top_thresholds_equal_numpy_quantile_of_the_first_block(model_dirs, corpus_file, tmp_path):
    store = ingest_rules(model_dirs("llama"), corpus_file, tmp_path / "s", rules=("top:0.99", "top:0.5"))
    assert store.rules == ("top:0.99", "top:0.5") and store.rule == "top:0.99"   # the first is the default
    hidden = reference_hidden(model_dirs("llama"), "llama", store, batch_size=3)
    assert store.manifest.n_tokens > 2 * BLOCK
    for rule, q in (("top:0.99", 0.99), ("top:0.5", 0.5)):
        got = store.manifest.rule_record(rule).thresholds
        want = [float(np.quantile(np.abs(hidden[l][:BLOCK]), q)) for l in store.manifest.layers]
        assert list(got) == want
        assert_same(store.with_rule(rule), reference_rule_masks(hidden, rule, BLOCK))
    # no sign rule recorded: nothing at the sign rule's paths
    assert not (tmp_path / "s" / "masks").exists()


def interrupted(model_dir, corpus, out, monkeypatch, after_blocks: int) -> None:
    """An ingest of RULES that stops once `after_blocks` blocks are committed, as a kill would."""
    stop_ingest(lambda: ingest_rules(model_dir, corpus, out), monkeypatch, after_blocks)


@pytest.mark.slow
def test_resume_reads_the_thresholds_back(model_dirs, corpus_file, tmp_path, monkeypatch):
    from actdb.ingest.thresholds import TopCandidates

    whole = ingest_rules(model_dirs("opt"), corpus_file, tmp_path / "whole")
    interrupted(model_dirs("opt"), corpus_file, tmp_path / "s", monkeypatch, after_blocks=2)
    state = json.loads((tmp_path / "s" / "ingest-state.json").read_text())
    assert state["blocks_done"] == 2 and list(state["thresholds"]) == ["top:0.9"]

    def recomputed(self):
        raise AssertionError("a resumed ingest recomputed a threshold")
    monkeypatch.setattr(TopCandidates, "threshold", recomputed)
    store = ingest_rules(model_dirs("opt"), corpus_file, tmp_path / "s", resume=True)
    assert store.manifest.fire_rules == whole.manifest.fire_rules
    for rule in RULES:
        for l in store.manifest.layers:
            assert np.array_equal(store.with_rule(rule).masks(l), whole.with_rule(rule).masks(l)), (rule, l)


def test_resume_refuses_blocks_without_thresholds(model_dirs, corpus_file, tmp_path, monkeypatch):
    """A state with blocks done but no top:Q thresholds (damaged: they are committed with block 0)
    stops the resume with one line, instead of fixing them from a later block."""
    interrupted(model_dirs("opt"), corpus_file, tmp_path / "s", monkeypatch, after_blocks=2)
    rewrite_record(tmp_path / "s" / "ingest-state.json", lambda state: {**state, "thresholds": {}})
    with pytest.raises(actdb.StoreError, match=r"ingest-state.json: 2 blocks done but no thresholds for top:0.9; "
                                               r"start the ingest again with --overwrite"):
        ingest_rules(model_dirs("opt"), corpus_file, tmp_path / "s", resume=True)


def test_resume_refuses_other_rules(model_dirs, corpus_file, tmp_path, monkeypatch):
    interrupted(model_dirs("opt"), corpus_file, tmp_path / "s", monkeypatch, after_blocks=1)
    with pytest.raises(actdb.InputError, match="fire_rules: expected"):
        ingest_rules(model_dirs("opt"), corpus_file, tmp_path / "s", rules=("sign",), resume=True)


@pytest.mark.slow
def test_check_covers_every_rule(model_dirs, corpus_file, tmp_path):
    from actdb.store.audit import check_store

    ingest_rules(model_dirs("opt"), corpus_file, tmp_path / "s", index=True)
    report = check_store(tmp_path / "s")
    assert report.problems == [], report.lines()
    chunk = next(p for p in sorted((tmp_path / "s" / "rules" / "top-0.9" / "masks").rglob("*"))
                 if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes()[:-1] + bytes([chunk.read_bytes()[-1] ^ 1]))
    report = check_store(tmp_path / "s")
    assert any(str(chunk) in p and "sha256" in p for p in report.problems), report.lines()
    # the rule's index is checked like the sign rule's
    (tmp_path / "s" / "rules" / "abs-gt-0.02" / "index" / "index.json").unlink()
    report = check_store(tmp_path / "s")
    assert any("abs-gt-0.02" in p and "index" in p for p in report.problems), report.lines()


@pytest.mark.parametrize("bad", ["abs", "abs>", "abs>-1", "top:1", "top:0.2", "top:x", "max>3", "abs>nan"])
def test_a_malformed_rule_is_one_line_and_writes_nothing(bad, model_dirs, corpus_file, tmp_path):
    r = CliRunner().invoke(main, ["ingest", str(model_dirs("opt")), str(corpus_file), "-o", str(tmp_path / "s"),
                                  "--fire-rule", "sign", "--fire-rule", bad, "--no-progress"])
    assert r.exit_code != 0
    assert r.output.strip().count("\n") == 0 and "--fire-rule: expected" in r.output, r.output
    assert "Traceback" not in r.output and not (tmp_path / "s").exists()


def test_duplicate_rules_are_refused():
    with pytest.raises(actdb.InputError, match="distinct"):
        actdb.IngestSettings(fire_rule=("top:0.9", "top:0.90"))


@pytest.fixture(scope="module")
def ruled(model_dirs, corpus_file, tmp_path_factory):
    """An OPT store under sign and top:0.9, with its index (every rule's)."""
    d = tmp_path_factory.mktemp("ruled")
    return ingest_rules(model_dirs("opt"), corpus_file, d / "s", rules=("sign", "top:0.9"), index=True)


def test_views_take_the_rule_and_count_its_masks(ruled):
    for rule in ruled.rules:
        h = ruled.with_rule(rule)
        fires = ruled.sql("SELECT layer, neuron, fires FROM neurons ORDER BY layer, neuron", {"rule": rule})
        want = np.concatenate([h.masks(l).sum(axis=0) for l in ruled.manifest.layers])
        assert np.array_equal(fires["fires"].to_numpy(), want), rule
        dead = ruled.query("dead_per_layer", {"rule": rule})
        assert dead["n_dead"].to_list() == [int((h.masks(l).sum(axis=0) == 0).sum()) for l in ruled.manifest.layers]
        assert ruled.sql("SELECT rule FROM index_info", {"rule": rule}).item() == rule
    # the rules differ, so a view that ignored the rule would fail above
    assert not np.array_equal(ruled.masks(0), ruled.with_rule("top:0.9").masks(0))
    t = ruled.sql("SELECT layer, threshold FROM fire_rules WHERE rule = 'top:0.9' ORDER BY layer")
    assert t["threshold"].to_list() == list(ruled.manifest.rule_record("top:0.9").thresholds)
    # the rule-independent views come from the first rule's index
    assert "massive_activations" in ruled.with_rule("top:0.9").views()
    with pytest.raises(actdb.InputError, match="rule: expected one of the recorded rules sign, top:0.9"):
        ruled.sql("SELECT 1", {"rule": "abs>1.0"})


@pytest.mark.slow
def test_cli_query_plot_and_report_name_the_rule(ruled, tmp_path):
    r = CliRunner().invoke(main, ["query", str(ruled.path), "token_detectors_per_layer", "-p", "rule", "top:0.9",
                                  "-f", "csv"])
    assert r.exit_code == 0, r.output
    want = ruled.query("token_detectors_per_layer", {"rule": "top:0.9"})
    assert [int(x.split(",")[1]) for x in r.output.splitlines()[1:]] == want["n_detectors"].to_list()
    r = CliRunner().invoke(main, ["query", str(ruled.path), "dead_per_layer", "-p", "rule", "top:9"])
    assert r.exit_code != 0 and r.output.count("\n") == 1 and "expected one of the recorded rules" in r.output
    from actdb.presentation.plot import render

    fig = render(ruled, "fig1a", {"rule": "top:0.9"})
    assert "fired = top:0.9" in fig._suptitle.get_text()
    r = CliRunner().invoke(main, ["report", str(ruled.path), "-o", str(tmp_path / "rep"), "--rule", "all"])
    assert r.exit_code == 0, r.output
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "`sign`:" in text and "`top:0.9`:" in text and "fired = top:0.9" in text
    sub = [d.name for d in (tmp_path / "rep").iterdir() if d.is_dir()]
    assert len(sub) == 2 and any(n.endswith("--top-0.9") for n in sub), sub
    assert all((tmp_path / "rep" / n / "queries" / "dead_per_layer.csv").exists() for n in sub)


def test_index_builds_the_rules_named(ruled, tmp_path):
    """--rule as report takes it: repeatable, in the order given, or 'all' (the default)."""
    import shutil

    p = tmp_path / "s"
    shutil.copytree(ruled.path, p)
    r = CliRunner().invoke(main, ["index", str(p), "--rule", "top:0.9", "--rule", "sign", "--force", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == [f"index        {p / 'rules' / 'top-0.9' / 'index'}", f"index        {p / 'index'}"]
    r = CliRunner().invoke(main, ["index", str(p), "--rule", "all", "--no-progress"])
    assert r.exit_code == 0 and r.output.splitlines() == [f"index        {p / 'index'}"], r.output
    r = CliRunner().invoke(main, ["index", str(p), "--rule", "abs>1", "--no-progress"])
    assert r.exit_code == 1 and "expected one of the recorded rules" in r.output, r.output
