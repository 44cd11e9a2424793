"""The per-neuron quantile (ntop:Q) and the four sign cases of a gated FFN (glu:SS): every rule's masks
equal a plain hooked forward that computes it in numpy (tests/reference.py), for every gated family and
for OPT under ntop:Q; the ntop:Q thresholds equal numpy's per-neuron quantile of the first block, kept
in a file of the rule's own that `actdb check`, the readers and a resume verify; glu:SS on a model
whose FFN is not gated is one line."""
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

import actdb
from actdb.cli import main
from actdb.grammar import parse_fire_rule
from actdb.ingest.thresholds import order_statistics
from actdb.store.audit import check_store
from actdb.store.layout import rule_slug, rule_thresholds
from reference import reference_hidden, reference_rule_masks, reference_signs
from stores import assert_same, run_ingest
from stores import interrupted as stop_ingest
from tiers import slow_except

GLU = ("glu:++", "glu:+-", "glu:-+", "glu:--")
RULES = ("sign", "ntop:0.9", *GLU)
GATED = ("llama", "mistral", "qwen2", "gemma")   # tests/tiny.py's gated families
BLOCK = 64   # rows of the first block: it ends inside a batch (3 sequences of <= 24 tokens)


def ingest_rules(model_dir, corpus, out, rules=RULES, **kw):
    return run_ingest(model_dir, corpus, out, block_tokens=BLOCK, fire_rule=rules, **kw)


def quantiles(hidden, layers, q):
    """numpy's per-neuron Q-quantile of |h| over the first block: float32 [layers, d_ffn]."""
    return np.stack([np.quantile(np.abs(hidden[l][:BLOCK]), q, axis=0) for l in layers])


def by_construction(block0, lo: int) -> None:
    """A neuron fires on the n - 1 - lo largest of its first block's n values (fewer where values tie
    at its threshold: the BOS rows of a document's sequences are the same token at the same place)."""
    n = block0.sum(axis=0)
    assert (n <= BLOCK - 1 - lo).all() and (n == BLOCK - 1 - lo).mean() > 0.9


def test_the_grammar_names_the_new_rules():
    assert parse_fire_rule("ntop:.995").name == "ntop:0.995"
    assert parse_fire_rule("glu:+\u2212").name == "glu:+-" and parse_fire_rule("glu:-+").signs == "-+"
    assert [rule_slug(r) for r in ("ntop:0.995", *GLU)] == ["ntop-0.995", "glu-pp", "glu-pn", "glu-np", "glu-nn"]
    for bad in ("ntop:1", "ntop:0.2", "glu:+", "glu:+-+", "glu:+*", "glu:"):
        with pytest.raises(actdb.InputError, match="--fire-rule: expected"):
            parse_fire_rule(bad)


@pytest.mark.parametrize("family", slow_except(GATED, "llama"))
def test_gated_rules_equal_numpy_on_a_hooked_forward(family, model_dirs, corpus_file, tmp_path):
    store = ingest_rules(model_dirs(family), corpus_file, tmp_path / "s", mode="document")
    assert store.rules == RULES
    hidden = reference_hidden(model_dirs(family), family, store, batch_size=3)
    signs = reference_signs(model_dirs(family), family, store, batch_size=3)
    for rule in RULES[1:]:
        ref = reference_rule_masks(hidden, rule, BLOCK, signs)
        assert_same(store.with_rule(rule), ref)
        assert (tmp_path / "s" / "rules" / rule_slug(rule) / "masks").is_dir()
        freq = np.mean([ref[l].mean() for l in ref])
        assert 0.01 < freq < 0.99, f"{rule}: a rule that never or always fires makes the comparison vacuous"
    # the four cases split the (token, neuron) values where neither sign is 0
    for l in store.manifest.layers:
        cases = sum(store.with_rule(r).masks(l).astype(int) for r in GLU)
        assert np.array_equal(cases, (signs[l] != 0).all(-1).astype(int))
    assert np.array_equal(store.neuron_thresholds("ntop:0.9"), quantiles(hidden, store.manifest.layers, 0.9))


def test_opt_under_ntop_equals_numpy(model_dirs, corpus_file, tmp_path):
    """ReLU: a neuron whose quantile is 0 (it fired on fewer than 1 - Q of the first block) fires where
    |h| > 0, which is where it fires under sign; every other one fires on its top 1 - Q of the block."""
    store = ingest_rules(model_dirs("opt"), corpus_file, tmp_path / "s", rules=("sign", "ntop:0.9"), mode="document")
    hidden = reference_hidden(model_dirs("opt"), "opt", store, batch_size=3)
    ref = reference_rule_masks(hidden, "ntop:0.9", BLOCK)
    assert_same(store.with_rule("ntop:0.9"), ref)
    t = store.neuron_thresholds("ntop:0.9")
    assert np.array_equal(t, quantiles(hidden, store.manifest.layers, 0.9))
    zero = t == 0
    assert 0 < zero.mean() < 1, "both kinds of neuron, or the statement is vacuous"
    lo, _, _ = order_statistics(BLOCK, 0.9)
    for i, l in enumerate(store.manifest.layers):
        got = store.with_rule("ntop:0.9").masks(l)
        assert np.array_equal(got[:, zero[i]], store.masks(l)[:, zero[i]])
        by_construction(got[:BLOCK, ~zero[i]], lo)


@pytest.mark.slow
def test_ntop_thresholds_equal_numpy_per_neuron_quantile(model_dirs, corpus_file, tmp_path):
    rules = ("ntop:0.99", "ntop:0.5", "top:0.99")
    store = ingest_rules(model_dirs("llama"), corpus_file, tmp_path / "s", rules=rules)
    hidden = reference_hidden(model_dirs("llama"), "llama", store, batch_size=3)
    assert store.manifest.n_tokens > 2 * BLOCK
    for rule, q in (("ntop:0.99", 0.99), ("ntop:0.5", 0.5)):
        assert np.array_equal(store.neuron_thresholds(rule), quantiles(hidden, store.manifest.layers, q))
        assert store.manifest.rule_record(rule).thresholds == ()   # per neuron: in the rule's file only
        assert_same(store.with_rule(rule), reference_rule_masks(hidden, rule, BLOCK))
        # by construction: each neuron fires on the n - 1 - lo largest of its first block's n values
        lo, _, _ = order_statistics(BLOCK, q)
        for l in store.manifest.layers:
            by_construction(store.with_rule(rule).masks(l)[:BLOCK], lo)
    assert_same(store.with_rule("top:0.99"), reference_rule_masks(hidden, "top:0.99", BLOCK))


@pytest.fixture(scope="module")
def gated(model_dirs, corpus_file, tmp_path_factory):
    """A LLaMA store under sign, ntop:0.9 and glu:+-, with its index (every rule's)."""
    d = tmp_path_factory.mktemp("gated")
    return ingest_rules(model_dirs("llama"), corpus_file, d / "s", rules=("sign", "ntop:0.9", "glu:+-"), index=True)


def test_views_show_the_thresholds_and_answer_under_the_new_rules(gated):
    t = gated.sql("SELECT layer, neuron, threshold FROM neuron_thresholds WHERE rule = 'ntop:0.9' "
                  "ORDER BY layer, neuron")
    want = gated.neuron_thresholds("ntop:0.9")
    assert np.array_equal(t["threshold"].to_numpy().reshape(want.shape), want.astype(np.float64))
    assert t["layer"].to_list() == [l for l in gated.manifest.layers for _ in range(gated.manifest.d_ffn)]
    fr = gated.sql("SELECT rule, count(threshold) AS n FROM fire_rules GROUP BY rule ORDER BY rule")
    assert fr.rows() == [("glu:+-", 0), ("ntop:0.9", 0), ("sign", 0)]
    for rule in ("ntop:0.9", "glu:+-"):
        h = gated.with_rule(rule)
        fires = gated.sql("SELECT fires FROM neurons ORDER BY layer, neuron", {"rule": rule})["fires"].to_numpy()
        assert np.array_equal(fires, np.concatenate([h.masks(l).sum(axis=0) for l in gated.manifest.layers]))
        for view in ("coverage", "token_detectors", "positional_neurons", "detector_suppression"):
            gated.sql(f"SELECT count(*) FROM {view}", {"rule": rule})   # the views answer, unchanged


def test_check_and_readers_verify_the_thresholds_file(gated, tmp_path):
    assert check_store(gated.path).problems == []
    p = tmp_path / "s"
    shutil.copytree(gated.path, p)
    f = rule_thresholds(p, "ntop:0.9")
    raw = f.read_bytes()
    f.write_bytes(raw[:100] + bytes([raw[100] ^ 1]) + raw[101:])
    report = check_store(p)
    assert any(str(f) in x and "sha256" in x for x in report.problems), report.lines()
    st = actdb.open(p, rule="ntop:0.9")
    with pytest.raises(actdb.StoreError, match="thresholds.parquet: sha256 differs"):
        st.neuron_thresholds()
    with pytest.raises(actdb.StoreError, match="thresholds.parquet: sha256 differs"):
        st.sql("SELECT * FROM neuron_thresholds")
    f.unlink()
    assert any(str(f) in x and "missing" in x for x in check_store(p).problems)
    with pytest.raises(actdb.InputError, match="expected one with per-neuron thresholds"):
        st.neuron_thresholds("glu:+-")


def interrupted(model_dir, corpus, out, monkeypatch, after_blocks: int) -> None:
    """An ingest of RULES that stops as a kill would, when committing block `after_blocks`."""
    stop_ingest(lambda: ingest_rules(model_dir, corpus, out), monkeypatch, after_blocks)


@pytest.mark.parametrize("after_blocks", slow_except([0, 2], 2))
def test_resume_reads_the_neuron_thresholds_back(after_blocks, model_dirs, corpus_file, tmp_path, monkeypatch):
    """Killed while committing block 0 (thresholds not yet committed: fixed again), or block 2 (the
    state records the file's digest, and the resume reads the file back instead of recomputing)."""
    from actdb.ingest.thresholds import NeuronCandidates

    whole = ingest_rules(model_dirs("llama"), corpus_file, tmp_path / "whole")
    interrupted(model_dirs("llama"), corpus_file, tmp_path / "s", monkeypatch, after_blocks)
    state = json.loads((tmp_path / "s" / "ingest-state.json").read_text())
    assert state["blocks_done"] == after_blocks
    if after_blocks:
        assert set(state["thresholds"]["ntop:0.9"]) == {"bytes", "sha256"}

        def recomputed(self):
            raise AssertionError("a resumed ingest recomputed a threshold")
        monkeypatch.setattr(NeuronCandidates, "thresholds", recomputed)
    store = ingest_rules(model_dirs("llama"), corpus_file, tmp_path / "s", resume=True)
    assert store.manifest.fire_rules == whole.manifest.fire_rules
    assert rule_thresholds(store.path, "ntop:0.9").read_bytes() == rule_thresholds(whole.path, "ntop:0.9").read_bytes()
    for rule in RULES:
        for l in store.manifest.layers:
            assert np.array_equal(store.with_rule(rule).masks(l), whole.with_rule(rule).masks(l)), (rule, l)
    assert [p for p in check_store(store.path).problems if "no query index" not in p] == []


def test_resume_refuses_a_changed_thresholds_file(model_dirs, corpus_file, tmp_path, monkeypatch):
    interrupted(model_dirs("llama"), corpus_file, tmp_path / "s", monkeypatch, after_blocks=1)
    f = rule_thresholds(tmp_path / "s", "ntop:0.9")
    f.write_bytes(f.read_bytes() + b"\0")
    with pytest.raises(actdb.StoreError, match=r"thresholds.parquet: missing, or not the file whose digest "
                                               r"ingest-state.json records; start the ingest again with --overwrite"):
        ingest_rules(model_dirs("llama"), corpus_file, tmp_path / "s", resume=True)


def test_glu_on_a_model_that_is_not_gated_is_one_line(model_dirs, corpus_file, tmp_path):
    r = CliRunner().invoke(main, ["ingest", str(model_dirs("opt")), str(corpus_file), "-o", str(tmp_path / "s"),
                                  "--seq-len", "24", "--fire-rule", "sign", "--fire-rule", "glu:+\u2212",
                                  "--no-progress"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.output.strip() == ("Error: --fire-rule glu:+-: expected a model with a gated FFN (act_fn(gate x) * up x), "
                                "got the opt family, whose FFN is not gated"), r.output
    assert not (tmp_path / "s").exists()
