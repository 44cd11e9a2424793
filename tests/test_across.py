"""Several stores in one session (query/across.py): each store's views under its schema, every view
also the union over the stores led by store, model, n_layers and depth, each checked against the
single-store views; names, the fire rule of every store, and confinement, the time limit and the
Parquet checks for every store."""
from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import actdb
from actdb.cli import main
from actdb.errors import InputError, QueryTimeout, StoreError
from actdb.explore.layer import PATTERNS
from actdb.query.across import LEAD, Stores, alone, folder_name
from actdb.query.catalogue import saved_queries

ACROSS = [q.name for q in saved_queries() if q.across]
SLOW = "SELECT count(*) AS n FROM range(1000000000) a, range(1000000) b"
# views and macros (at other thresholds than the stores') with a layer, and views without one
WITH_LAYER = ["layer_stats", "neurons", "neuron_domains", "coverage", "token_detectors", "trigram_detectors",
              "positional_neurons", "oscillatory_ranges", "fire_rules", "ngram_layers", "massive_activations",
              "vocab_projection", "detector_suppression", "neuron_positions",
              "token_detectors_at(max_cov := 40, p_token := 0.3, p_share := 0.3)", "coverage_at(p := 0.5)",
              "coverage2(p := 0.8)", "positional_neurons_at(mi_min := 0.01)",
              "massive_activations_at(abs_min := 0.05, ratio := 2)", "vocab_projection_at(k := 3)",
              "detector_suppression_at(max_cov := 40, p_token := 0.3, p_share := 0.3)",
              "neighbours(0, 1, k := 3, by := 'jaccard')"]
NO_LAYER = ["index_info", "tokens", "vocab", "token_counts", "trigram_counts", "position_counts", "domain_counts"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(r) -> str:
    assert r.exit_code != 0 and r.output.startswith("Error: ") and r.output.count("\n") == 1, r.output
    return r.output


def rows(df) -> list[tuple]:
    return sorted((tuple(r) for r in df.rows()), key=repr)


def same(a: list[tuple], b: list[tuple]) -> bool:
    """Equal rows, floats to 1e-9 (a union's sums may add in another order)."""
    def eq(u, v):
        if isinstance(u, float) and isinstance(v, float):
            return math.isclose(u, v, rel_tol=1e-9, abs_tol=1e-12)
        if isinstance(u, (list, tuple)) and isinstance(v, (list, tuple)):
            return len(u) == len(v) and all(map(eq, u, v))
        return u == v
    return len(a) == len(b) and all(map(eq, a, b))


def test_each_union_is_its_stores_views_led_by_store_model_depth(across_paths, across_stores):
    singles = {name: actdb.open(p) for name, p in across_paths.items()}
    for view in WITH_LAYER + NO_LAYER:
        union = across_stores.sql(f"SELECT * FROM {view}")
        lead = list(LEAD if view not in NO_LAYER else LEAD[:3])
        assert union.columns[:len(lead)] == lead, (view, union.columns)
        assert "depth" not in union.columns[len(lead):], view
        for name, st in singles.items():
            single = st.sql(f"SELECT * FROM {view}")
            mine = union.filter(union["store"] == name)
            assert same(rows(mine.drop(lead)), rows(single)), (view, name)
            assert same(rows(across_stores.sql(f"SELECT * FROM {name}.{view}")), rows(single)), (view, name)
            n = st.manifest.n_layers
            assert set(mine["model"]) <= {f"tiny-opt-{n}x{st.manifest.d_ffn}"} and set(mine["n_layers"]) <= {n}
            if "depth" in lead:
                assert all(d == l / (n - 1) for l, d in zip(mine["layer"], mine["depth"])), view
    # no threshold given: each store's own (opt3's index is at p_token = p_share = 0.8)
    tri = across_stores.sql("SELECT store, count(*) AS n FROM trigram_detectors_at() GROUP BY ALL")
    want = {name: st.sql("SELECT count(*) AS n FROM trigram_detectors")["n"][0] for name, st in singles.items()}
    assert dict(tri.rows()) == {k: v for k, v in want.items() if v}
    info = across_stores.sql("SELECT store, p_token FROM index_info ORDER BY store").rows()
    assert info == [("opt2", 0.95), ("opt3", 0.8), ("opt4", 0.95)]


def test_a_saved_query_runs_on_each_store_or_across_them(across_paths, across_stores):
    """A one-store saved query: each store's answer led by LEAD; a query across models: its answer
    for each store is the one-store answer of that store alone (checked against numpy in
    test_queries)."""
    for name, p in across_paths.items():
        st = actdb.open(p)
        df = across_stores.query("dead_per_layer")
        assert df.columns == [*LEAD, "layer", "n_neurons", "n_dead", "dead_pct"]
        assert rows(df.filter(df["store"] == name).drop(LEAD)) == rows(st.query("dead_per_layer"))
        sites = across_stores.query("massive_sites", {"abs_min": 0.1, "ratio": 4})
        assert sites.columns[:5] == ["store", "model", "n_layers", "dim", "n_activations"]   # no layer, no depth
        assert "n_layers_1" in sites.columns   # the query's own n_layers (the layers a dimension spans)
        assert same(rows(sites.filter(sites["store"] == name).drop(LEAD[:3])), rows(st.query("massive_sites", {"abs_min": 0.1, "ratio": 4})))
        for q in ACROSS:
            mine = across_stores.query(q)
            assert same(rows(mine.filter(mine["store"] == name)), rows(st.query(q))), (q, name)
            assert same(rows(mine.filter(mine["store"] == name)), rows(alone(st).query(q))), (q, name)
    # an override applies to every store
    df = across_stores.query("across_detectors", {"tri_max_cov": 2})
    for name, p in across_paths.items():
        st = actdb.open(p)
        want = st.query("trigram_detectors_per_layer", {"max_cov": 2})
        got = df.filter((df["store"] == name) & df["n_trigram_detectors"].is_not_null())
        assert got["n_trigram_detectors"].to_list() == want["n_detectors"].to_list()


def test_names_from_folders_or_given_and_two_alike_refused(across_paths, tmp_path):
    p2, p3 = str(across_paths["opt2"]), str(across_paths["opt3"])
    assert actdb.open([p2, p3]).names == ("opt2", "opt3")
    assert isinstance(actdb.open(p2), actdb.Store)   # one store: as it always was
    st = actdb.open([f"small={p2}", f"big={p3}"])
    assert st.names == ("small", "big")
    assert st.sql("SELECT DISTINCT store FROM big.neurons, neurons ORDER BY 1").rows() == [("big",), ("small",)]
    assert actdb.open({"a": p2}).sql("SELECT DISTINCT store FROM layer_stats").rows() == [("a",)]
    assert folder_name("runs/opt-125m") == "opt_125m" and folder_name("runs/125m") == "_125m"
    with pytest.raises(InputError, match=r"store name opt2: given to two stores"):
        actdb.open([p2, p2])
    with pytest.raises(InputError, match=r"store name OPT2: given to two stores"):
        actdb.open({"opt2": p2, "OPT2": p3})   # one schema for SQL, whatever the case
    for bad in ("main", "select", "1x", "a-b"):
        with pytest.raises(InputError, match="store name"):
            actdb.open({bad: p2})
    r = run("sql", p2, p2, "SELECT 1")
    assert "given to two stores" in one_line_error(r) and "NAME=PATH" in r.output
    assert "no such store" in one_line_error(run("sql", p2, tmp_path / "none", "SELECT 1"))
    # an existing folder whose name holds "=" is a path, not NAME=PATH
    odd = tmp_path / "a=b"
    shutil.copytree(p2, odd)
    assert actdb.open([str(odd), p3]).names == ("a_b", "opt3")


def test_the_rule_applies_to_every_store_and_a_store_without_it_is_named(tiny_store, tiny_store_copy, across_paths):
    two = actdb.open({"a": tiny_store, "b": tiny_store_copy})
    got = two.sql("SELECT store, rule, count(*) AS n FROM neurons JOIN index_info USING (store) "
                  "WHERE NOT dead GROUP BY ALL ORDER BY 1",
                  {"rule": "top:0.9"})
    alive = actdb.open(tiny_store, rule="top:0.9").sql("SELECT count(*) FROM neurons WHERE NOT dead").item()
    assert got.rows() == [("a", "top:0.9", alive), ("b", "top:0.9", alive)]
    assert two.with_rule("top:0.9").query("across_dead_freq").height == 2 * len(actdb.open(tiny_store).manifest.layers)
    mixed = actdb.open({"a": tiny_store, "b": across_paths["opt2"]})
    with pytest.raises(InputError, match=rf"store b \({across_paths['opt2']}\): rule: expected one of"):
        mixed.sql("SELECT 1", {"rule": "top:0.9"})
    r = run("query", tiny_store, across_paths["opt2"], "across_dead_freq", "-p", "rule", "top:0.9")
    assert "store opt2" in one_line_error(r) and "top:0.9" in r.output


def test_a_store_without_its_index_is_named(across_paths, tmp_path):
    from stores import make_known

    bare = make_known(tmp_path / "bare")
    with pytest.raises(StoreError, match=rf"{tmp_path / 'bare'}.*no index.*actdb index"):
        actdb.open([str(across_paths["opt2"]), str(bare)]).sql("SELECT 1")


def test_confined_to_the_stores_and_under_the_time_limit(across_paths, across_stores, tmp_path):
    outside = tmp_path / "x.parquet"
    pq.write_table(pa.table({"x": [1]}), outside)
    for sql in ("SELECT * FROM read_text('/etc/passwd')", f"SELECT * FROM read_parquet('{outside}')",
                "SELECT * FROM glob('/*')", "SELECT * FROM read_csv('http://example.com/x.csv')"):
        with pytest.raises(InputError, match="reads only the store's own files"):
            across_stores.sql(sql)
        assert "reads only the store's own files" in one_line_error(run("sql", *across_paths.values(), sql))
    # every store's files are allowed (and checked)
    f = across_paths["opt4"] / "index" / "neuron_fires.parquet"
    assert across_stores.sql(f"SELECT count(*) AS n FROM read_parquet('{f}')")["n"][0] == 4 * 64
    for sql in ("UPDATE opt2.neurons SET fires = 0", "CREATE TABLE x AS SELECT 1", "DETACH opt2", "SET threads = 1"):
        with pytest.raises(InputError):
            across_stores.sql(sql)
    with pytest.raises(QueryTimeout, match=r"query interrupted after 0.5 s \(timeout\)"):
        across_stores.sql(SLOW, timeout=0.5)
    assert across_stores.sql("SELECT count(*) AS n FROM neurons", timeout=5)["n"][0] == 2 * 32 + 3 * 48 + 4 * 64
    assert one_line_error(run("sql", *across_paths.values(), SLOW, "--timeout", "0.5")) == \
        "Error: query interrupted after 0.5 s (--timeout)\n"


def _flip(f: Path) -> None:
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 3] ^= 0x01
    f.write_bytes(raw)


def test_each_store_guard_checks_its_own_files(across_paths, tmp_path):
    """A flipped byte in one store's file: refused where the union or that store's schema reads it,
    named in one line; the other store's schema still answers."""
    a, b = (Path(shutil.copytree(across_paths[n], tmp_path / n)) for n in ("opt2", "opt3"))
    _flip(b / "index" / "neuron_fires.parquet")
    for sql in ("SELECT sum(fires) FROM neurons", "SELECT * FROM opt3.layer_stats", "SELECT * FROM layer_stats",
                f"SELECT * FROM read_parquet('{a}/index/neuron_fires.parquet')"):
        with pytest.raises(StoreError, match=rf"{b}/index/neuron_fires.parquet: sha256 differs"):
            actdb.open([str(a), str(b)]).sql(sql)
    r = run("query", a, b, "across_dead_freq")
    assert f"{b}/index/neuron_fires.parquet: sha256 differs" in one_line_error(r)
    st = actdb.open([str(a), str(b)])
    assert st.sql("SELECT count(*) AS n FROM opt2.layer_stats")["n"][0] == 2
    # a Parquet file no record lists, in one store, is refused where a statement can read any file
    pq.write_table(pa.table({"x": [1]}), a / "index" / "extra.parquet")
    with pytest.raises(StoreError, match=rf"{a}/index/extra.parquet: not recorded"):
        actdb.open([str(a), str(b)]).sql("SELECT count(*) FROM read_parquet($f)", {"f": str(b / "vocab.parquet")})


def test_cli_sql_and_query_over_several_stores(across_paths, across_stores):
    paths = list(across_paths.values())
    r = run("sql", *paths, "SELECT store, count(*) AS n FROM neurons GROUP BY ALL ORDER BY store", "-f", "csv")
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == ["store,n", "opt2,64", "opt3,144", "opt4,256"]
    r = run("sql", f"two={paths[0]}", "SELECT DISTINCT store FROM two.neurons, neurons", "-f", "csv")
    assert r.output.splitlines() == ["store", "two"], r.output
    r = run("query", *paths, "dead_per_layer", "-f", "csv")
    assert r.exit_code == 0 and r.output.splitlines()[0] == "store,model,n_layers,depth,layer,n_neurons,n_dead,dead_pct"
    assert len(r.output.splitlines()) == 1 + 2 + 3 + 4
    import json

    r = run("query", *paths, "across_dead_freq", "-f", "json")
    assert r.exit_code == 0, r.output
    assert [tuple(d.values()) for d in json.loads(r.output)] == across_stores.query("across_dead_freq").rows()
    assert "NAME|FILE" in one_line_error(run("query", paths[0]))


def test_a_stores_handle_follows_a_rebuilt_index(across_paths, tmp_path):
    from actdb.index.build import build_index

    a, b = (Path(shutil.copytree(across_paths[n], tmp_path / n)) for n in ("opt2", "opt3"))
    st = Stores({"a": actdb.open(a), "b": actdb.open(b)})
    before = st.sql("SELECT store, p_cov FROM index_info ORDER BY 1").rows()
    build_index(b, progress=False, force=True, p_cov=0.9)
    assert before == [("a", 0.95), ("b", 0.95)]
    assert st.sql("SELECT store, p_cov FROM index_info ORDER BY 1").rows() == [("a", 0.95), ("b", 0.9)]


# ---------------------------------------------------------------- figures, report, explorer

def _drawn(ax) -> list[tuple[list, list]]:
    """(x, y) of each line an axes draws, in drawing order, a missing value as None."""
    return [([float(v) for v in line.get_xdata()],
             [None if v is None or math.isnan(v) else float(v) for v in line.get_ydata()]) for line in ax.get_lines()]


def _per_store(df, col: str, names) -> list[tuple[list, list]]:
    return [(df.filter(df["store"] == n)["depth"].to_list(),
             [None if v is None else float(v) for v in df.filter(df["store"] == n)[col].to_list()]) for n in names]


def test_each_figure_across_models_draws_the_saved_queries_answers(across_stores):
    """The data each figure draws, a line (or bar) per store, equals its saved query's answer."""
    from actdb.presentation.across import FIGURES
    from actdb.presentation.plot import render

    names = across_stores.names
    dead, det = across_stores.query("across_dead_freq"), across_stores.query("across_detectors")
    top, pos = across_stores.query("across_massive_by_depth"), across_stores.query("across_positional")
    freq = dead.with_columns(dead["mean_freq_alive"] * 100)
    want = {"fig1a": _per_store(dead, "dead_pct", names), "fig1b": _per_store(freq, "mean_freq_alive", names),
            "fig3a": _per_store(det, "n_token_detectors", names), "fig14": _per_store(det, "n_trigram_detectors", names),
            "fig3b": [x for pair in zip(_per_store(det, "n_tokens", names),
                                        _per_store(det, "n_tokens_cumulative", names)) for x in pair],
            "massive-top": [x for pair in zip(_per_store(top, "top1", names), _per_store(top, "median_abs", names))
                            for x in pair]}
    assert sorted([*want, "fig8"]) == sorted(FIGURES)
    for name, lines in want.items():
        fig = render(across_stores, name)
        assert _drawn(fig.axes[0]) == lines, name
        assert fig.axes[0].get_xlabel().startswith("relative depth"), name
        assert FIGURES[name].paper in fig._suptitle.get_text(), name
    # positional: (a) per layer of each store (0 where none), (b) each pattern's share of the store's neurons
    a, b = render(across_stores, "fig8").axes
    lines = []
    for n in names:
        st, mine = across_stores[n], pos.filter(pos["store"] == n)
        per = {l: mine.filter(mine["layer"] == l)["n_neurons"].sum() for l in st.manifest.layers}
        lines.append(([l / (st.manifest.n_layers - 1) for l in st.manifest.layers], [float(v) for v in per.values()]))
    assert _drawn(a) == lines
    assert pos.height and any(y for _, ys in lines for y in ys)
    bars = [r.get_height() for r in b.patches]
    k = len(PATTERNS)
    for i, n in enumerate(names):
        st, mine = across_stores[n], pos.filter(pos["store"] == n)
        for strong, off in ((True, 0), (False, 1)):
            got = bars[(2 * i + off) * k:(2 * i + off + 1) * k]
            share = [100 * mine.filter((mine["pattern"] == p) & (mine["strong"] == strong))["n_neurons"].sum()
                     / (len(st.manifest.layers) * st.manifest.d_ffn) for p in PATTERNS]
            assert got == pytest.approx(share), (n, strong)


@pytest.mark.slow
def test_plot_over_several_stores(across_paths, across_stores, tiny_store, hostile_store, tmp_path):
    from actdb.presentation.across import FIGURES
    from actdb.presentation.plot import render

    paths = list(across_paths.values())
    r = run("plot", *paths, "fig1a", "-o", tmp_path / "dead.png")
    assert r.exit_code == 0 and (tmp_path / "dead.png").read_bytes()[:4] == b"\x89PNG", r.output
    # the legend names each model (its layers and neurons) and the fire rule
    labels = render(across_stores, "fig1a").axes[0].get_legend_handles_labels()[1]
    assert labels == [f"tiny-opt-{n}x{d} ({n} layers x {d}), fired = sign" for n, d in ((2, 32), (3, 48), (4, 64))]
    r = run("plot", *paths, "all", "-o", tmp_path / "figs")
    assert r.exit_code == 0, r.output
    assert sorted(p.stem for p in (tmp_path / "figs").glob("*.png")) == sorted(FIGURES)
    assert "with several stores, expected one of" in one_line_error(run("plot", *paths, "fig5", "-o", tmp_path / "x.png"))
    r = run("plot", tiny_store, across_paths["opt2"], "fig1a", "--rule", "top:0.9", "-o", tmp_path / "y.png")
    assert "store opt2" in one_line_error(r)
    # the same store under two rules, side by side, told apart by the rule
    both = Stores({"sign": actdb.open(tiny_store), "top": actdb.open(tiny_store, rule="top:0.9")})
    assert [t.split(", fired = ")[1] for t in render(both, "fig1b").axes[0].get_legend_handles_labels()[1]] == \
        ["sign", "top:0.9"]
    # a one-layer model has no relative depth (NULL); its layer is drawn at 0
    one = Stores({"one": hostile_store, "opt2": actdb.open(across_paths["opt2"])})
    assert one.sql("SELECT DISTINCT depth FROM layer_stats WHERE store = 'one'").rows() == [(None,)]
    assert [x for x, _ in _drawn(render(one, "fig1a").axes[0])] == [[0.0], [0.0, 1.0]]
    # the massive figure without any capture: skipped with the reason
    r = run("plot", hostile_store.path, hostile_store.path, "massive-top")
    assert "store name store: given to two stores" in one_line_error(r)
    r = run("plot", f"a={hostile_store.path}", f"b={hostile_store.path}", "massive-top", "-o", tmp_path / "m.png")
    assert "no store has a residual-stream capture" in one_line_error(r)
    r = run("plot", "--list")
    assert "With several stores" in r.output and "across_dead_freq" in r.output


def _assert_row_is_the_stores_views(row, st) -> None:
    """A comparison's row of a store: that store's own views' numbers."""
    d = st.sql("SELECT sum(n_dead) AS dead, sum(n_neurons) AS n, avg(mean_freq_alive) AS f FROM layer_stats")
    assert math.isclose(row["dead_pct"], 100 * d["dead"][0] / d["n"][0])
    assert math.isclose(row["mean_freq_alive"], d["f"][0])
    assert row["token_detectors"] == st.sql("SELECT count(*) FROM token_detectors").item()
    assert row["detected_tokens"] == st.sql("SELECT count(DISTINCT t) FROM (SELECT unnest(token_ids) AS t "
                                            "FROM token_detectors)").item()
    assert row["trigram_detectors"] == st.sql("SELECT count(*) FROM trigram_detectors").item()
    assert row["positional"] == st.sql("SELECT count(*) FROM positional_neurons").item()
    assert row["positional_strong"] == st.sql("SELECT count(*) FROM positional_neurons WHERE strong").item()
    assert row["massive_top"] == st.sql("SELECT max(abs(value)) FROM capture_topk WHERE kind = 'resid'").item()
    assert row["n_massive"] == st.sql("SELECT count(*) FROM massive_activations").item()
    assert row["massive_first_layer"] == st.sql("SELECT min(layer) FROM massive_activations").item()
    assert (row["model"], row["n_layers"], row["layers"], row["d_ffn"], row["rule"]) == \
        (Path(st.manifest.model).name, st.manifest.n_layers, len(st.manifest.layers), st.manifest.d_ffn, st.rule)


def _assert_by_depth_is_the_stores_views(rows: list[dict], name: str, st) -> None:
    mine = [r for r in rows if r["store"] == name]
    ls = st.sql("SELECT layer, 100 * dead_frac AS pct, mean_freq_alive AS f FROM layer_stats ORDER BY layer")
    n = st.manifest.n_layers
    assert [r["layer"] for r in mine] == ls["layer"].to_list()
    assert [r["depth"] for r in mine] == [l / (n - 1) for l in ls["layer"]]
    assert [r["dead_pct"] for r in mine] == pytest.approx(ls["pct"].to_list())
    assert [r["mean_freq_alive"] for r in mine] == pytest.approx(ls["f"].to_list())
    det = dict(st.sql("SELECT layer, count(*) FROM token_detectors GROUP BY layer").rows())
    assert [r["token_detectors"] for r in mine] == [det.get(l, 0) for l in ls["layer"]]
    pos = dict(st.sql("SELECT layer, count(*) FROM positional_neurons GROUP BY layer").rows())
    assert [r["positional"] for r in mine] == [pos.get(l, 0) for l in ls["layer"]]
    top = dict(st.sql("SELECT layer, max(abs(value)) FROM capture_topk WHERE kind = 'resid' GROUP BY layer").rows())
    assert [r["massive_top"] for r in mine] == [top.get(l) for l in ls["layer"]]


@pytest.mark.slow
def test_report_has_an_across_models_section_whose_numbers_are_the_stores_views(across_paths, tmp_path):
    from dataclasses import asdict

    from actdb.explore.compare import comparison
    from actdb.query.across import named

    paths = list(across_paths.values())[:2]
    r = run("report", *paths, "-o", tmp_path / "rep")
    assert r.exit_code == 0, r.output
    text = (tmp_path / "rep" / "report.md").read_text()
    assert text.index("## Across models") < text.index("## tiny-opt-2x32")
    assert (tmp_path / "rep" / "across-models" / "figures" / "fig1a.png").exists()
    assert "(across-models/queries/across_detectors.csv)" in text
    assert (tmp_path / "rep" / "across-models" / "queries" / "across_detectors.csv").exists()
    # the table: a row per store, its numbers those of the store's own views
    table = [l for l in text[text.index("## Across models"):text.index("## tiny-opt-2x32")].splitlines()
             if l.startswith("| ")]
    head = [c.strip() for c in table[0].strip("|").split(" | ")]
    assert head[:3] == ["store", "model", "fired"] and "top \\|h\\|" in table[0]
    assert len(table) == 1 + len(paths)
    c = comparison(named([actdb.open(p) for p in paths]))
    for line, p, row in zip(table[1:], paths, c.models):
        st = actdb.open(p)
        cells = dict(zip(head, (c.strip() for c in line.strip("|").split(" | "))))
        _assert_row_is_the_stores_views(asdict(row), st)
        dead = st.sql("SELECT 100 * sum(n_dead) / sum(n_neurons) FROM layer_stats").item()
        assert cells["store"] == p.name and math.isclose(float(cells["dead"][:-2]), dead, rel_tol=0.01, abs_tol=0.005)
        n_det = st.sql("SELECT count(*) FROM token_detectors").item()
        assert cells["token detectors (tokens)"].startswith(f"{n_det:,} (")
        assert cells["positional (strong)"].startswith(f"{st.sql('SELECT count(*) FROM positional_neurons').item():,} (")
    assert not c.same_thresholds and "Each store at the thresholds of its own index" in text   # opt3's are others
    # one store: no section across models
    r = run("report", paths[0], "-o", tmp_path / "one")
    assert r.exit_code == 0 and "## Across models" not in (tmp_path / "one" / "report.md").read_text()


def test_the_explorer_compares_the_served_stores(across_paths, tmp_path):
    import html

    from starlette.testclient import TestClient

    from actdb.serve.app import create_app
    from serve_stores import make_hostile

    handles = [actdb.open(p) for p in across_paths.values()]
    with TestClient(create_app(handles), raise_server_exceptions=False, base_url="http://127.0.0.1") as c:
        j = c.get("/api/compare").json()
        assert [m["store"] for m in j["models"]] == list(across_paths)
        for m, st in zip(j["models"], handles):
            _assert_row_is_the_stores_views(m, st)
        for name, st in zip(across_paths, handles):
            _assert_by_depth_is_the_stores_views(j["by_depth"], name, st)
        assert not j["same_thresholds"]   # opt3's index is at other detector thresholds
        assert [f["name"] for f in j["figures"]] == ["fig1a", "fig1b", "fig3a", "fig3b", "fig8", "fig14", "massive-top"]
        r = c.get("/compare")
        assert r.status_code == 200 and all(f'href="/s/{n}"' in r.text for n in across_paths)
        for m, row in zip(j["models"], j["table"]["rows"]):
            assert f"<td>{row[5]}</td>" in r.text and math.isclose(float(row[5][:-2]), m["dead_pct"], rel_tol=0.01,
                                                                    abs_tol=0.005)
        assert c.get(j["figures"][0]["png"]).content[:4] == b"\x89PNG"
        r = c.get("/compare/figure/fig5.png")
        assert r.status_code == 404 and "fig5" in r.json()["error"]
        assert 'href="/compare"' in c.get("/").text
    # a model and a folder named in markup: escaped on the page, as they are in the JSON
    bad = "<script>alert(3)</script>&"
    hostile = make_hostile(tmp_path / "a<b>&'c", model=bad)
    with TestClient(create_app([hostile, handles[0]]), raise_server_exceptions=False, base_url="http://127.0.0.1") as c:
        j = c.get("/api/compare").json()
        assert j["models"][0]["model"] == bad and j["by_depth"][0]["depth"] is None   # one layer: no depth
        page = c.get("/compare").text
        assert bad not in page and html.escape(bad) in page and "a<b>" not in page
        assert re.findall(r"<script[^>]*>", page) == ['<script src="/static/app.js" defer>']
