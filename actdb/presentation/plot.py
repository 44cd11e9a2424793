"""Paper figures as PNG, drawn from the saved queries of `queries/` on any store.

Each figure is one entry of FIGURES: the saved query it draws, the views it needs, and a
small drawing function. Titles name the figure, the thresholds it is drawn at (those its query
runs at: the index's, unless a parameter is given), the model and the corpus; axes say what is
counted and in which unit. A figure whose question has no answer in the store (no detectors,
no oscillatory neurons, no massive activations) is still drawn, with a note saying so, so that
"none" is a visible result rather than a missing file.

    actdb plot STORE fig1a -o dead.png
    actdb plot STORE all -o figures/
"""
from __future__ import annotations

import io
import textwrap
import threading
import warnings
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..explore.thresholds import labels
from ..query.across import several
from ..store.layout import check_outside_stores
from . import across
from .figure import PAPER, SUN, Figure, caption, describe, drawn_at, note as _note

LAYER = "layer"


class _Ctx:
    """What a drawing function may ask of the store beyond its own query; labels: the
    thresholds it is drawn at, as text."""

    def __init__(self, store, params: dict[str, Any], labels: dict[str, str]) -> None:
        self.store, self.params, self.labels = store, params, labels

    def query(self, name: str, **params: Any):
        return self.store.query(name, params or None)


def _layers_axis(ax, layers) -> None:
    layers = list(layers)
    ax.set_xlabel("layer")
    if len(layers) <= 32:
        ax.set_xticks(layers)
    ax.grid(axis="y", alpha=0.3)


def _bars(ylabel: str, col: str, pct: bool = False, empty: str | None = None):
    def draw(fig, df, ctx) -> None:
        ax = fig.subplots()
        y = df[col].fill_null(0).to_list()
        ax.bar(df[LAYER].to_list(), [v * 100 if pct else v for v in y], color="tab:blue")
        _layers_axis(ax, df[LAYER].to_list())
        ax.set_ylabel(ylabel)
        if empty and not any(y):
            _note(ax, empty)
    return draw


def _stacked(bin_col: str, count_col: str, legend: str, select=None, empty: str = "no data"):
    """Stacked bars per layer, one colour per bin (in the query's order)."""
    def draw(fig, df, ctx) -> None:
        import matplotlib as mpl

        if select is not None:
            df = select(df)
        ax = fig.subplots()
        layers = sorted(set(df[LAYER].to_list()))
        bins = list(dict.fromkeys(df[bin_col].to_list()))
        colours = mpl.colormaps["viridis"].resampled(max(len(bins), 2))
        bottom = [0] * len(layers)
        for i, b in enumerate(bins):
            sub = dict(zip(*df.filter(df[bin_col] == b).select(LAYER, count_col).to_dict(as_series=False).values()))
            h = [sub.get(l, 0) or 0 for l in layers]
            ax.bar(layers, h, bottom=bottom, color=colours(i), label=str(b))
            bottom = [a + c for a, c in zip(bottom, h)]
        _layers_axis(ax, layers)
        ax.set_ylabel("neurons")
        if not any(bottom):
            _note(ax, empty)
        else:
            ax.legend(title=legend, bbox_to_anchor=(1.01, 1), loc="upper left", fontsize=9, frameon=False)
    return draw


def _lines(ylabel: str, series: dict[str, tuple[str, str]], log: bool = False, empty: str | None = None):
    """series: column -> (label, linestyle)."""
    def draw(fig, df, ctx) -> None:
        ax = fig.subplots()
        total = 0
        for col, (label, style) in series.items():
            y = df[col].fill_null(0).to_list()
            total += sum(y)
            ax.plot(df[LAYER].to_list(), y, style, marker="o", ms=4, label=label)
        _layers_axis(ax, df[LAYER].to_list())
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.legend(frameon=False)
        if empty and not total:
            _note(ax, empty)
    return draw


def _clip(tokens, n: int = 4, width: int = 38) -> str:
    text = ", ".join(repr(t)[1:-1] for t in (tokens or [])[:n])
    return text if len(text) <= width else text[:width - 1] + "…"


def _projection_table(fig, df, ctx) -> None:
    ax = fig.subplots()
    ax.axis("off")
    if df.height == 0:
        _note(ax, "no token detectors in this store")
        return
    # the strongest suppressors and promoters first, at most 16 rows
    df = df.sort("mean_score").head(16)
    rows = [[f"{r['layer']}:{r['neuron']}", _clip(r["triggers"]), f"{r['mean_score']:+.2f}",
             _clip(r["promoted"]), _clip(r["suppressed"])] for r in df.iter_rows(named=True)]
    table = ax.table(cellText=rows, colLabels=["layer:neuron", "triggers (covered tokens)", "mean score",
                                               "top promoted", "top suppressed"],
                     loc="upper center", cellLoc="left", colLoc="left",
                     colWidths=[0.09, 0.27, 0.08, 0.28, 0.28])
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1, 1.35)


def _suppression(fig, df, ctx) -> None:
    ax = fig.subplots()
    per = df.filter(df[LAYER].is_not_null())
    overall = df.filter(df[LAYER].is_null())
    ax.bar(per[LAYER].to_list(), [v * 100 for v in per["share_suppressing"].to_list()], color="tab:purple",
           label="per layer")
    if overall.height and overall["share_suppressing"][0] is not None:
        s = overall["share_suppressing"][0] * 100
        ax.axhline(s, color="k", lw=1, label=f"all layers: {s:.0f} % of {overall['n_detectors'][0]} detectors")
    ax.axhline(80, color="tab:red", ls="--", lw=1, label="paper (OPT): over 80 %")
    _layers_axis(ax, per[LAYER].to_list())
    ax.set_ylim(0, 100)
    ax.set_ylabel("token detectors suppressing their triggers (%)")
    ax.legend(frameon=False, loc="lower right")
    if per.height == 0:
        _note(ax, "no token detectors in this store")


_KINDS = ("oscillatory", "both extremes", "one extreme", "other")


def _positional(fig, df, ctx) -> None:
    import matplotlib as mpl

    ax = fig.subplots()
    layers = list(store_layers(ctx.store))
    colours = mpl.colormaps["tab10"]
    bottom = [0] * len(layers)
    for i, kind in enumerate(_KINDS):
        for strong in (True, False):
            sub = df.filter((df["pattern"] == kind) & (df["strong"] == strong))
            counts = dict(zip(sub[LAYER].to_list(), sub["n_neurons"].to_list()))
            h = [counts.get(l, 0) for l in layers]
            if not any(h):
                continue
            ax.bar(layers, h, bottom=bottom, color=colours(i), alpha=1.0 if strong else 0.45,
                   hatch=None if strong else "//", label=f"{kind} ({'strong' if strong else 'weak'})")
            bottom = [a + c for a, c in zip(bottom, h)]
    _layers_axis(ax, layers)
    ax.set_ylabel(f"positional neurons (I(act; pos) > {ctx.labels['mi_min']})")
    if any(bottom):
        ax.legend(frameon=False, fontsize=9, bbox_to_anchor=(1.01, 1), loc="upper left")
    else:
        _note(ax, "no positional neurons in this store")


def _oscillatory(fig, df, ctx) -> None:
    ax = fig.subplots()
    neurons = list(dict.fromkeys(zip(df[LAYER].to_list(), df["neuron"].to_list())))[:60]
    where = {n: i for i, n in enumerate(neurons)}
    for r in df.iter_rows(named=True):
        i = where.get((r["layer"], r["neuron"]))
        if i is not None:
            ax.plot([r["pos_start"], r["pos_end"] + 1], [i, i], lw=4, solid_capstyle="butt", color="tab:green")
    T = ctx.store.manifest.seq_len
    ax.set_xlim(0, T)
    ax.set_xlabel("position in the sequence (tokens)")
    ax.set_ylabel("neuron (layer:index)")
    ax.set_yticks(range(len(neurons)))
    ax.set_yticklabels([f"{l}:{n}" for l, n in neurons], fontsize=7)
    ax.invert_yaxis()
    if not neurons:
        _note(ax, "no strong oscillatory neurons in this store")


def _positional_team(fig, df, ctx) -> None:
    """fr(pos) of the layer's positional neurons in team order, how many ranges hold each
    position, and the Jaccard of each pair (explore.positional: the same data as the team page)."""
    from ..explore.positional import team_of

    layer = ctx.params.get("layer")   # the query took it already: a number
    team = team_of(ctx.store, df, None if layer is None else int(layer))
    grid = fig.add_gridspec(2, 2, width_ratios=(1.6, 1), height_ratios=(4, 1))
    prof, cov, jac = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[:, 1])
    if not team.neurons:
        for ax in (prof, cov, jac):
            ax.axis("off")
        _note(prof, "no positional neurons " + ("in this store" if team.layer is None else f"in layer {team.layer}"))
        return
    import numpy as np

    k, T = len(team.neurons), team.n_positions
    im = prof.imshow(np.array(team.profile), aspect="auto", interpolation="nearest", cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(im, ax=prof, label="firing frequency fr(pos)", fraction=0.04)
    step = max(1, -(-k // 40))
    ticks = list(range(0, k, step))
    prof.set_yticks(ticks)
    prof.set_yticklabels([str(team.neurons[i].neuron) for i in ticks], fontsize=6)
    prof.set_ylabel(f"positional neuron of layer {team.layer} (ordered by range)")
    prof.set_title(f"layer {team.layer}: {k} positional neurons; {team.covered} of {T} positions above some "
                   f"neuron's mean, {len(team.cover)} of them cover those", fontsize=9)
    cov.bar(range(T), team.coverage, width=1.0, color="tab:green")
    cov.set_xlim(-0.5, T - 0.5)
    cov.set_xlabel("position in the sequence (tokens, full-length sequences)")
    cov.set_ylabel("neurons above\ntheir mean", fontsize=8)
    m = np.array([[np.nan if v is None else v for v in row] for row in team.jaccard])
    np.fill_diagonal(m, np.nan)
    top = float(np.nanmax(m)) if k > 1 and not np.isnan(m).all() else 1.0
    im = jac.imshow(m, interpolation="nearest", cmap="magma", vmin=0, vmax=max(0.05, top))
    fig.colorbar(im, ax=jac, label="Jaccard of the fire masks (all tokens)", fraction=0.046)
    jac.set_title("pairwise overlap, same order", fontsize=9)
    jac.set_xticks([])
    jac.set_yticks([])


def _trigram_detectors(fig, df, ctx) -> None:
    a, b = fig.subplots(1, 2)
    layers = df[LAYER].to_list()
    a.bar(layers, df["n_detectors"].to_list(), color="tab:blue")
    a.set_ylabel("trigram-detecting neurons")
    a.set_title("(a) detectors", fontsize=10)
    b.plot(layers, df["n_trigrams"].to_list(), "-", marker="o", ms=4, label="per layer")
    b.plot(layers, df["n_trigrams_cumulative"].to_list(), "--", marker="o", ms=4, label="cumulative")
    b.set_ylabel("trigrams with a detecting neuron")
    b.set_title("(b) covered trigrams", fontsize=10)
    b.legend(frameon=False)
    for ax in (a, b):
        _layers_axis(ax, layers)
    if not sum(df["n_detectors"].to_list()):
        _note(a, "no trigram detectors")


def _massive_sites(fig, df, ctx) -> None:
    ax = fig.subplots()
    if df.height == 0:
        _note(ax, "no massive activations at these thresholds")
        ax.set_xlabel("layer")
        ax.set_ylabel("|h| (residual stream)")
        return
    sites = ctx.query("massive_sites", **{k: v for k, v in ctx.params.items() if k in ("abs_min", "ratio")})
    top_dims = sites["dim"].head(6).to_list()
    info = {r["dim"]: r for r in sites.iter_rows(named=True)}
    layers = list(store_layers(ctx.store))
    for dim in top_dims:
        sub = df.filter(df["dim"] == dim)
        by_layer = dict(zip(sub[LAYER].to_list(), sub["max_abs"].to_list()))
        s = info[dim]
        label = (f"dim {dim}: {s['share_first_position'] * 100:.0f} % on position 0, "
                 f"tokens {_clip(s['top_tokens'], 3, 30)}")
        # NaN where the dimension is not massive: the line breaks instead of bridging the gap
        ax.plot(layers, [by_layer.get(l, float("nan")) for l in layers], marker="o", ms=4, label=label)
    import polars as pl

    med = df.group_by(LAYER).agg(pl.col("mean_seq_median_abs").mean()).sort(LAYER)
    ax.plot(med[LAYER].to_list(), med["mean_seq_median_abs"].to_list(), "k:", label="sequence median |h|")
    ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel("largest massive |h| in the dimension (log scale)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(frameon=False, fontsize=8)


def _massive_top(fig, df, ctx) -> None:
    ax = fig.subplots()
    layers = df[LAYER].to_list()
    tops = df["top3"].to_list()
    for k, style in enumerate(("-", "--", "-.")):
        ax.plot(layers, [t[k] if t and len(t) > k else None for t in tops], style, marker="o", ms=4,
                label=f"top {k + 1}")
    ax.plot(layers, df["median_abs"].to_list(), "k:", marker=".", label="median")
    ax.set_yscale("log")
    _layers_axis(ax, layers)
    ax.set_ylabel("|h| of the residual stream (log scale)")
    ax.legend(frameon=False)


def store_layers(store) -> tuple[int, ...]:
    return tuple(int(l) for l in store.manifest.layers)


def _ngram_select(n: int):
    return lambda df: df.filter(df["n"] == n)


FIGURES: dict[str, Figure] = {f.name: f for f in [
    Figure("fig1a", f"{PAPER}, Figure 1a", "Dead neurons per layer", "dead_per_layer",
           _bars("dead neurons (% of the layer)", "dead_pct")),
    Figure("fig1b", f"{PAPER}, Figure 1b", "Mean firing frequency of alive neurons", "mean_freq_alive",
           _bars("firing frequency (% of tokens, mean over alive neurons)", "mean_freq_alive", pct=True)),
    Figure("fig2", f"{PAPER}, Figure 2", "Neurons by the number of tokens covering {p_cov} of their fires",
           "unigram_coverage_hist", _stacked("bin", "n_neurons", "covering tokens")),
    Figure("fig3a", f"{PAPER}, Figure 3a", "Token-detecting neurons per layer", "token_detectors_per_layer",
           _bars("token-detecting neurons", "n_detectors", empty="no token detectors"), criteria=("token_detector",)),
    Figure("fig3b", f"{PAPER}, Figure 3b", "Tokens with a detecting neuron", "detected_tokens_per_layer",
           _lines("tokens with a detecting neuron", {"n_tokens": ("per layer", "-"),
                                                     "n_tokens_cumulative": ("cumulative", "--")},
                  empty="no token detectors"), criteria=("token_detector",)),
    Figure("fig4", f"{PAPER}, Figure 4", "Detected tokens per layer: all, and new vs the layers below",
           "new_tokens_per_layer", _lines("detected tokens", {"n_tokens": ("all", "-"),
                                                               "n_new": ("new vs all layers below", "--")},
                                          empty="no token detectors"), criteria=("token_detector",)),
    Figure("fig5", f"{PAPER}, Figure 5", "Token detectors: triggers and vocabulary projection of their update",
           "detector_projection_examples", _projection_table, needs=("vocab_projection",),
           criteria=("token_detector",)),
    Figure("fig6", f"{PAPER}, §4.4 / Figure 6", "Token detectors whose update suppresses their own triggers",
           "detector_suppression_share", _suppression, needs=("vocab_projection",), criteria=("token_detector",)),
    Figure("fig8", f"{PAPER}, Figures 7-8", "Positional neurons per layer by pattern", "positional_by_kind",
           _positional, criteria=("positional",)),
    Figure("fig9", f"{PAPER}, Figure 9", "Position ranges where strong oscillatory neurons fire",
           "oscillatory_ranges", _oscillatory, criteria=("positional",)),
    Figure("positional_team", f"{PAPER}, §5", "A layer's positional neurons as a team: position ranges and overlaps",
           "positional_team", _positional_team, criteria=("positional",)),
    Figure("fig12", f"{PAPER}, Figure 12", "Neurons by the number of bigrams covering {p_cov} of their fires",
           "ngram_coverage_hist", _stacked("bin", "n_neurons", "covering bigrams", _ngram_select(2),
                                           empty="no bigram statistics (n-gram layers of the index)")),
    Figure("fig13", f"{PAPER}, Figure 13", "Neurons by the number of trigrams covering {p_cov} of their fires",
           "ngram_coverage_hist", _stacked("bin", "n_neurons", "covering trigrams", _ngram_select(3),
                                           empty="no trigram statistics (n-gram layers of the index)")),
    Figure("fig14", f"{PAPER}, Figure 14", "Trigram-detecting neurons and the trigrams they cover",
           "trigram_detectors_per_layer", _trigram_detectors, criteria=("trigram_detector",)),
    Figure("fig15", f"{PAPER}, Figure 15", "Covered trigrams per layer: new overall and new vs the previous layer",
           "trigram_detectors_per_layer",
           _lines("trigrams with a detecting neuron", {"n_trigrams": ("all", "-"),
                                                       "n_new_overall": ("new vs all layers below", "--"),
                                                       "n_new_vs_previous": ("new vs the previous layer", ":")},
                  empty="no trigram detectors"), criteria=("trigram_detector",)),
    Figure("massive-top", f"{SUN}, Figures 1-2", "Largest magnitudes of the residual stream per layer",
           "massive_top_magnitudes", _massive_top, needs=("capture", "capture_topk")),
    Figure("massive-sites", f"{SUN}, §2", "Massive activations: dimensions, layers and tokens",
           "massive_by_layer", _massive_sites, needs=("capture", "massive_activations"), criteria=("massive",)),
]}


def figures(store) -> dict[str, Figure]:
    """The figures a handle draws: the papers' for one store, those across models for several
    (presentation/across.py)."""
    return across.FIGURES if several(store) else FIGURES


def available(store, fig: Figure) -> str | None:
    """None if the store (or stores) can draw the figure, else why not."""
    if several(store):
        return across.available(store, fig)
    if "capture" in fig.needs and "resid" not in store.manifest.capture:
        return "the store has no residual-stream capture (ingested with --capture none)"
    missing = [v for v in fig.needs if v != "capture" and v not in store.views()]
    if missing:
        return f"the store has no {', '.join(missing)} view (ingested before it existed?)"
    return None


def render(store, name: str, params: dict[str, Any] | None = None):
    """One figure of FIGURES as a matplotlib Figure (the caller closes it); over several stores, one
    across models (presentation/across.py)."""
    if several(store):
        return across.render(store, name, params)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_def = FIGURES.get(name)
    if fig_def is None:
        raise InputError(f"figure: expected one of {', '.join(FIGURES)} or 'all', got {name!r}")
    store = store.with_rule((params or {}).get("rule"))
    why = available(store, fig_def)
    if why:
        raise InputError(f"{name}: cannot draw: {why}")
    params = dict(params or {})
    store = store.with_rule(params.pop("rule", None))   # figures take the fire rule like saved queries
    df = store.query(fig_def.query, params or None)
    values = drawn_at(store, fig_def, params)
    title, said = caption(fig_def, values)
    wide = fig_def.name in ("fig5", "fig14", "positional_team")
    width = 110 if wide else 90
    fig = plt.figure(figsize=(13, 6.5) if wide else (9, 5.5), dpi=110, layout="constrained")
    try:
        fig_def.draw(fig, df, _Ctx(store, params, labels(values)))
        fig.suptitle("\n".join([f"{title} (after {fig_def.paper})", *([textwrap.fill(said, width)] if said else []),
                                textwrap.fill(describe(store), width)]), fontsize=11)
    except BaseException:
        plt.close(fig)
        raise
    return fig


_DRAWING = threading.Lock()   # matplotlib's pyplot is not thread-safe: one figure at a time


def png(store, name: str, params: dict[str, Any] | None = None) -> bytes:
    """One figure of FIGURES as PNG bytes (a server's: drawn in any thread, one at a time)."""
    import matplotlib.pyplot as plt

    with _DRAWING:
        fig = render(store, name, params)
        try:
            buf = io.BytesIO()
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Glyph .* missing from font")
                fig.savefig(buf, format="png")
        finally:
            plt.close(fig)
    return buf.getvalue()


def plot(store, name: str, out: str | Path, params: dict[str, Any] | None = None) -> Path:
    """Draw one figure of FIGURES to a PNG file."""
    import matplotlib.pyplot as plt

    check_outside_stores(out)
    out = Path(out)
    if out.is_dir():  # savefig would fail on it with IsADirectoryError, after the drawing
        raise InputError(f"-o {out}: is a folder; expected a PNG file for one figure (a folder is for 'all')")
    fig = render(store, name, params)
    tmp = out.with_name(f".{out.name}.tmp.png")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():  # tokens in scripts the font lacks draw as boxes; no need to warn
            warnings.filterwarnings("ignore", message="Glyph .* missing from font")
            fig.savefig(tmp)
        tmp.replace(out)  # no half-written PNG under the real name
    except OSError as e:  # a read-only or full output folder: the user's to fix
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise InputError(f"{out}: cannot write the figure ({e.strerror or e})") from None
    finally:
        plt.close(fig)
    return out


def plot_all(store, out_dir: str | Path, progress: bool = True) -> tuple[list[Path], dict[str, str]]:
    """Every figure the store (or stores) can draw into out_dir/NAME.png; returns (files, skipped name -> why)."""
    from tqdm import tqdm

    check_outside_stores(out_dir)
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise InputError(f"-o {out_dir}: is a file; expected a folder for 'all' (a PNG file is for one figure)")
    done, skipped = [], {}
    for name, fig_def in tqdm(figures(store).items(), desc="figures", unit="fig", disable=not progress):
        why = available(store, fig_def)
        if why:
            skipped[name] = why
            continue
        done.append(plot(store, name, Path(out_dir) / f"{name}.png"))
    return done, skipped


def list_lines() -> list[str]:
    return [f"{f.name:14s} {f.paper}: {caption(f)[0]} (query {f.query})" for f in FIGURES.values()] + \
        ["", "With several stores (actdb plot STORE... FIGURE), a line or bar group per store by relative depth:"] + \
        across.list_lines()
