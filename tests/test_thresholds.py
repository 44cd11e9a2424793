"""Thresholds have one home, the index record: on a store indexed at other thresholds than the
paper's, the saved queries, the figures (data, titles and labels), the card, the explorer
(pages and JSON) and the report all answer at the recorded ones, and say them; a parameter
given with -p still overrides. Checked against the views, the record and numpy (tests/test_index.Ref)."""
from __future__ import annotations

import html
import json

import polars as pl
import pytest
from click.testing import CliRunner

import actdb
from actdb.cli import main
from actdb.index.build import build_index
from actdb.query.catalogue import Recorded, saved_queries
from actdb.settings import IndexSettings
from actdb.store.index_info import read_index_info
from refs_projection_massive import DECOY_DIM, _massive, plant
from stores import make_known
from views_reference import UNI_BINS, Ref, same

# every threshold off the paper's value, each changing some answer of the hand-built store
ODD = dict(p_cov=0.9, tok_max_cov=1, tri_max_cov=20, p_token=0.9, p_share=0.9, mi_min=0.1, min_switches=2,
           abs_min=100.0, ratio=10.0)
PAPER = IndexSettings().thresholds()
BASE = "http://127.0.0.1"


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    p = make_known(tmp_path_factory.mktemp("odd") / "store")
    plant(p, actdb.open(p).tokens().sort("row")["pos"].to_numpy())
    build_index(p, progress=False, neuron_chunk=5, **ODD)
    return actdb.open(p)


@pytest.fixture(scope="module")
def ref(odd):
    return Ref(odd, p=ODD["p_cov"])


def at(q, values: dict) -> dict:
    """The parameters of saved query q that the header takes from the index, at `values`."""
    return {k: values[v.threshold] for k, v in q.params.items() if isinstance(v, Recorded)}


def test_the_record_holds_them(odd):
    assert read_index_info(odd.path).config.thresholds() == {**PAPER, **ODD}
    info = odd.sql("SELECT * FROM index_info").row(0, named=True)
    assert {k: info[k] for k in ODD} == ODD


def test_saved_queries_answer_at_the_recorded_thresholds(odd, ref):
    differs = set()
    for q in saved_queries():
        got = odd.query(q.name)
        assert got.rows() == odd.query(q.name, at(q, ODD)).rows(), q.name
        if at(q, ODD) and got.rows() != odd.query(q.name, at(q, PAPER)).rows():
            differs.add(q.name)
    # the thresholds do change these answers, so the equalities above can fail
    assert {"token_detectors_per_layer", "unigram_coverage_hist", "positional_by_kind", "massive_by_layer",
            "trigram_detectors_per_layer", "detected_tokens_per_layer"} <= differs
    # against the views (at the record) and numpy
    L = odd.manifest.layers
    view = dict(odd.sql("SELECT layer, count(*) FROM token_detectors GROUP BY layer").rows())
    det = [(l, sum(ref.detector(l, nn, 1, ODD["tok_max_cov"], ODD["p_cov"], ODD["p_token"], ODD["p_share"])
                   is not None for nn in range(ref.d))) for l in L]
    assert odd.query("token_detectors_per_layer").rows() == [(l, view.get(l, 0)) for l in L] == det
    assert det[0][1] == 1                                  # the two-token detector 0:4 is out at 1 token
    hist = odd.query("unigram_coverage_hist").select("layer", "lo", "hi", "n_neurons").rows()
    cov = {l: [ref.coverage(l, nn, 1) for nn in range(ref.d)] for l in L}
    assert hist == [(l, lo, hi, sum(1 for c in cov[l] if c is not None and lo <= c <= hi)) for l in L for lo, hi in UNI_BINS]
    pos = odd.query("positional_by_kind").rows()
    want = sorted({(l, pat, strong) for l in L for _, pat, strong in ref.positional(l, ODD["mi_min"],
                                                                                    ODD["min_switches"]).values()})
    assert [r[:3] for r in pos] == want
    assert sum(r[3] for r in pos) == odd.sql("SELECT count(*) FROM positional_neurons").item()
    massive = _massive(odd, ODD["abs_min"], ODD["ratio"])
    assert odd.query("massive_by_layer")["n_activations"].sum() == len(massive) == \
        odd.sql("SELECT count(*) FROM massive_activations").item()
    assert DECOY_DIM in set(odd.query("massive_sites")["dim"].to_list())   # past a ratio of 10, not of 1000


def test_query_command_defaults_to_the_record_and_p_overrides(odd):
    def run(*args):
        r = CliRunner().invoke(main, ["query", str(odd.path), "unigram_coverage_hist", "-f", "json", *args])
        assert r.exit_code == 0, r.output
        return [tuple(d.values()) for d in json.loads(r.output)]
    assert run() == odd.query("unigram_coverage_hist").rows()
    assert run("-p", "p", "0.95") == odd.query("unigram_coverage_hist", {"p": 0.95}).rows() != run()


def test_figures_are_drawn_and_titled_at_the_recorded_thresholds(odd, ref):
    from actdb.presentation.plot import render

    def heights(fig, ax=0):
        return [p.get_height() for p in fig.axes[ax].patches]

    def title(fig) -> str:   # wrapped to the figure's width
        return " ".join(fig._suptitle.get_text().split())

    fig = render(odd, "fig2")
    assert "covering 90 % of their fires" in title(fig)
    L = list(odd.manifest.layers)
    cov = {l: [ref.coverage(l, nn, 1) for nn in range(ref.d)] for l in L}
    want = [sum(1 for c in cov[l] if c is not None and lo <= c <= hi) for lo, hi in UNI_BINS for l in L]
    drawn = heights(fig)
    assert [h for h in drawn if h] == [w for w in want if w]   # a bin with no neuron in any layer is not drawn
    fig = render(odd, "fig3a")
    assert "1-1 tokens cover 90 % of its fires" in title(fig) and "P(fires | token) >= 90 %" in title(fig)
    assert heights(fig) == odd.query("token_detectors_per_layer")["n_detectors"].to_list()
    fig = render(odd, "fig3a", {"max_cov": "5", "p_cov": "0.95"})   # -p overrides, and the title says so
    assert "1-5 tokens cover 95 % of its fires" in title(fig)
    assert heights(fig) == odd.query("token_detectors_per_layer", {"max_cov": 5, "p_cov": 0.95})["n_detectors"].to_list()
    fig = render(odd, "fig8")
    assert fig.axes[0].get_ylabel() == "positional neurons (I(act; pos) > 0.1)"
    assert "I(act; pos) > 0.1; oscillatory: >= 2 switches" in title(fig)
    assert sum(heights(fig)) == odd.sql("SELECT count(*) FROM positional_neurons").item()
    assert "|h| > 100 and >= 10 x the sequence's median" in title(render(odd, "massive-sites"))


def test_the_card_says_the_recorded_share(odd):
    r = CliRunner().invoke(main, ["neuron", str(odd.path), "0", "2"])
    assert r.exit_code == 0, r.output
    cov = odd.sql("SELECT n_covering, n_distinct FROM coverage WHERE layer = 0 AND neuron = 2 ORDER BY n").rows()
    line = next(l for l in r.output.splitlines() if l.startswith("coverage"))
    assert line == "coverage     " + ", ".join(f"{a:,} of {b:,} {w}" for (a, b), w in
                                            zip(cov, ("tokens", "bigrams", "trigrams"))) + " cover 90 % of its fires"
    assert "95 %" not in r.output


def test_the_explorer_shows_and_answers_the_recorded_thresholds(odd):
    from starlette.testclient import TestClient

    from actdb.explore.overview import headline
    from actdb.serve.app import create_app, store_names

    (s,) = store_names([odd])
    with TestClient(create_app([odd]), base_url=BASE) as c:
        j = c.get(f"/api/s/{s}/neuron/0/2").json()
        assert {k: j["thresholds"][k] for k in ODD} == ODD
        assert [(x["n"], x["n_covering"]) for x in j["coverage"]] == \
            odd.sql("SELECT n, n_covering FROM coverage WHERE layer = 0 AND neuron = 2 ORDER BY n").rows()
        page = html.unescape(c.get(f"/s/{s}/neuron/0/2").text)
        assert "coverage (90 %)" in page and "1-1 tokens cover 90 % of its fires" in page and "95 %" not in page
        layer = c.get(f"/api/s/{s}/layer/0?detector=token").json()
        assert [r["neuron"] for r in layer["rows"]] == \
            odd.sql("SELECT neuron FROM token_detectors WHERE layer = 0 ORDER BY neuron")["neuron"].to_list()
        assert "I(act; pos) > 0.1" in html.unescape(c.get(f"/s/{s}/layer/0").text)
        (store,) = c.get(f"/api/s/{s}").json()["stores"]
        assert [(h["what"], h["value"]) for h in store["headline"]] == headline(odd)
        assert "unigram coverage (90 %)" in [h["what"] for h in store["headline"]]
        assert {f["name"]: f["title"] for f in store["figures"]}["fig2"] == \
            "Neurons by the number of tokens covering 90 % of their fires"
        sql = c.get(f"/api/s/{s}/sql?saved=token_detectors_per_layer").json()
        assert {p["name"]: p["default"] for p in sql["chosen"]["params"]} == \
            {"max_cov": 1, "p_cov": 0.9, "p_token": 0.9, "p_share": 0.9}
        assert sql["rows"] == [list(r) for r in odd.query("token_detectors_per_layer").rows()]


def test_the_report_answers_at_the_recorded_thresholds(odd, tmp_path):
    from actdb.presentation.report import write_report

    text = write_report([odd], tmp_path / "rep", progress=False).read_text()
    assert "| unigram coverage (90 %) |" in text and "covered by 1-1 tokens" in text
    assert "(max_cov = 1, p_cov = 0.9, p_token = 0.9, p_share = 0.9)" in text
    assert "**Neurons by the number of tokens covering 90 % of their fires**" in text
    sub = next(p for p in (tmp_path / "rep").iterdir() if p.is_dir())
    for name in ("token_detectors_per_layer", "unigram_coverage_hist", "positional_by_kind", "massive_by_layer"):
        got = pl.read_csv(sub / "queries" / f"{name}.csv").rows()
        assert same(got, odd.query(name).rows()), name    # changed by the thresholds: see above
