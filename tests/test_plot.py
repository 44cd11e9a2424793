"""`actdb plot` and `actdb report`: every figure draws on any store, the drawn numbers are
the numbers of a direct numpy computation, and bad requests are one-line errors."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from actdb.cli import main
from actdb.presentation.plot import FIGURES, render
from actdb.presentation.report import write_report
from stores import run_ingest

PNG = b"\x89PNG\r\n\x1a\n"


def numpy_dead_and_freq(st) -> tuple[list[float], list[float]]:
    dead, freq = [], []
    for layer in st.manifest.layers:
        m = st.masks(layer)                          # [rows, d_ffn] bool
        f = m.mean(axis=0)
        dead.append(100 * float((f == 0).mean()))
        freq.append(100 * float(f[f > 0].mean()))
    return dead, freq


def bar_heights(fig) -> list[float]:
    return [p.get_height() for p in fig.axes[0].patches]


def test_dead_and_frequency_bars_equal_numpy(known_store):
    dead, freq = numpy_dead_and_freq(known_store)
    for name, want in (("fig1a", dead), ("fig1b", freq)):
        fig = render(known_store, name)
        np.testing.assert_allclose(bar_heights(fig), want, rtol=1e-9)
        title = fig._suptitle.get_text()
        assert "Voita et al. 2023" in title and f"{known_store.manifest.n_tokens:,} tokens" in title
        assert fig.axes[0].get_xlabel() == "layer" and "%" in fig.axes[0].get_ylabel()


def test_coverage_histogram_counts_every_neuron_that_fires_after_bos(known_store):
    fig = render(known_store, "fig2")
    st = known_store
    pos = st.tokens().sort("row")["pos"].to_numpy()
    per_layer = {}
    for layer in st.manifest.layers:
        per_layer[layer] = int(st.masks(layer)[pos > 0].any(axis=0).sum())   # BOS excluded
    # stacked bars: one patch per (bin, layer); the layer's total is the sum over bins
    layers = sorted(per_layer)
    heights = np.array(bar_heights(fig)).reshape(-1, len(layers)).sum(axis=0)
    assert heights.tolist() == [per_layer[l] for l in layers]


def test_oscillatory_ranges_figure_draws_the_planted_ranges(known_store):
    fig = render(known_store, "fig9")
    # neuron 3 of layers 0 and 1 fires exactly on positions 0-3 and 8-11 of every sequence
    segments = {tuple(line.get_xdata()) for line in fig.axes[0].lines}
    assert {(0, 4), (8, 12)} <= segments
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert "0:3" in labels and "1:3" in labels


@pytest.mark.slow
def test_plot_all_via_cli_writes_every_figure(known_store, tmp_path):
    r = CliRunner().invoke(main, ["plot", str(known_store.path), "all", "-o", str(tmp_path / "figs")])
    assert r.exit_code == 0, r.output
    for name in FIGURES:
        data = (tmp_path / "figs" / f"{name}.png").read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, name
    assert not list((tmp_path / "figs").glob(".*")), "no temporary files left behind"
    one = CliRunner().invoke(main, ["plot", str(known_store.path), "fig3a", "-o", str(tmp_path / "a.png"),
                                    "-p", "max_cov", "1"])
    assert one.exit_code == 0 and (tmp_path / "a.png").read_bytes().startswith(PNG)


def test_plot_errors_are_one_line(known_store, tmp_path):
    r = CliRunner().invoke(main, ["plot", str(known_store.path), "fig99"])
    assert r.exit_code == 1 and "expected one of fig1a" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(main, ["plot", str(known_store.path), "fig3a", "-p", "nope", "1"])
    assert r.exit_code == 1 and "nope" in r.output and len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(main, ["plot", str(tmp_path / "missing"), "fig1a"])
    assert r.exit_code == 1 and "no such store" in r.output
    r = CliRunner().invoke(main, ["plot", "--list"])
    assert r.exit_code == 0 and all(name in r.output for name in FIGURES)


@pytest.fixture(scope="module")
def store_without_capture(model_dirs, corpus_file, tmp_path_factory):
    return run_ingest(model_dirs("opt"), corpus_file, tmp_path_factory.mktemp("nocap") / "s",
                      index=True, capture="none")


@pytest.mark.slow
def test_store_without_capture_skips_massive_figures(store_without_capture, tmp_path):
    r = CliRunner().invoke(main, ["plot", str(store_without_capture.path), "all", "-o", str(tmp_path)])
    assert r.exit_code == 0, r.output
    drawn = {p.stem for p in tmp_path.glob("*.png")}
    assert {"massive-top", "massive-sites"}.isdisjoint(drawn) and "fig1a" in drawn
    assert "skipped massive-top" in r.output
    r = CliRunner().invoke(main, ["plot", str(store_without_capture.path), "massive-top"])
    assert r.exit_code == 1 and "cannot draw" in r.output


@pytest.mark.slow
def test_report_numbers_figures_and_answers(known_store, tmp_path):
    path = write_report([known_store], tmp_path / "rep", title="t", notes=["a note"], progress=False)
    text = path.read_text()
    dead, _ = numpy_dead_and_freq(known_store)
    n_dead = round(sum(dead) / 100 * known_store.manifest.d_ffn)
    assert f"| dead neurons | {n_dead:,} of {len(dead) * known_store.manifest.d_ffn:,}" in text
    assert "a note" in text
    sub = next(p for p in (tmp_path / "rep").iterdir() if p.is_dir())
    for name in FIGURES:
        assert f"({sub.name}/figures/{name}.png)" in text
    from actdb.query.catalogue import saved_queries

    for q in saved_queries():
        csv = sub / "queries" / f"{q.name}.csv"
        assert csv.exists(), q.name
        assert csv.read_text().splitlines()[0] == ",".join(known_store.query(q.name).columns)
