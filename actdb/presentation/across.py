"""The papers' figures across models: one line (or bar group) per store on the relative-depth axis
(depth = layer / (n_layers - 1)), as the papers draw every model size on one axis, drawn from the
saved queries across models on a query.across.Stores.

    actdb plot runs/opt125m runs/opt1.3b fig1a -o dead.png
    actdb plot runs/opt125m runs/opt1.3b all -o figures/

The legend names each store's model and fire rule; the title says the thresholds each store is
drawn at (each store's own recorded ones unless a parameter is given).
"""
from __future__ import annotations

import textwrap
from typing import Any

from ..explore.layer import PATTERNS
from ..explore.thresholds import criteria, labels
from .figure import PAPER, SUN, Figure, caption, describe, drawn_at, note

DEPTH = "depth"


def depths(sub) -> list[float]:
    """The x of a store's rows: their relative depth, a one-layer model's only layer (NULL depth) at 0."""
    return [0.0 if d is None else d for d in sub[DEPTH].to_list()]


def _depth_axis(ax) -> None:
    ax.set_xlabel("relative depth: layer / (layers - 1)")
    ax.set_xlim(-0.03, 1.03)
    ax.grid(axis="y", alpha=0.3)


class _Series:
    """What a drawing function knows of the stores: each one's colour and legend label."""

    def __init__(self, stores, labels_at: dict[str, str]) -> None:
        import matplotlib as mpl

        self.stores, self.labels = stores, labels_at
        colours = mpl.colormaps["tab10"]
        self.colour = {name: colours(i % 10) for i, name in enumerate(stores.names)}
        said = {name: f"{describe_model(st)}, fired = {st.rule}" for name, st in stores.handles.items()}
        # two stores of one model and rule: the store's name tells them apart
        self.label = {name: text if list(said.values()).count(text) == 1 else f"{text} ({name})"
                      for name, text in said.items()}

    def each(self, df):
        """(name, rows of that store) for every store with rows, in the stores' order."""
        for name in self.stores.names:
            sub = df.filter(df["store"] == name)
            if sub.height:
                yield name, sub


def describe_model(st) -> str:
    from ..query.across import model_name

    return f"{model_name(st.manifest)} ({st.manifest.n_layers} layers x {st.manifest.d_ffn})"


def _lines(ylabel: str, col: str, pct: bool = False, log: bool = False, empty: str | None = None,
           dashed: str | None = None, dashed_label: str = ""):
    """One line per store of `col` against depth (and of `dashed`, dashed, in the same colour)."""
    def draw(fig, df, s: _Series) -> None:
        ax = fig.subplots()
        total = 0
        for name, sub in s.each(df):
            y = [None if v is None else (100 * v if pct else v) for v in sub[col].to_list()]
            total += sum(v for v in y if v)
            ax.plot(depths(sub), y, "-", marker="o", ms=4, color=s.colour[name], label=s.label[name])
            if dashed:
                ax.plot(depths(sub), sub[dashed].to_list(), "--", marker=".", color=s.colour[name])
        _depth_axis(ax)
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.legend(frameon=False, fontsize=8, title=dashed_label or None, title_fontsize=8)
        if empty and not total:
            note(ax, empty)
    return draw


def _positional(fig, df, s: _Series) -> None:
    """(a) positional neurons per layer against depth, a line per store; (b) by pattern, a bar group
    per pattern with a bar per store (strong solid, weak hatched), as a share of the store's neurons."""
    import polars as pl

    a, b = fig.subplots(1, 2, width_ratios=(3, 2))
    per = df.group_by("store", "layer", DEPTH).agg(pl.col("n_neurons").sum()).sort("store", "layer")
    for name in s.stores.names:
        st = s.stores[name]
        layers = list(st.manifest.layers)
        mine = dict(zip(*per.filter(per["store"] == name).select("layer", "n_neurons").to_dict(as_series=False)
                        .values()))
        n = st.manifest.n_layers
        a.plot([l / (n - 1) if n > 1 else 0.0 for l in layers], [mine.get(l, 0) for l in layers], "-", marker="o",
               ms=4, color=s.colour[name], label=s.label[name])
    _depth_axis(a)
    a.set_ylabel(f"positional neurons per layer (I(act; pos) > {s.labels['mi_min']})")
    a.legend(frameon=False, fontsize=8)
    a.set_title("(a) per layer", fontsize=10)
    names = list(s.stores.names)
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        st = s.stores[name]
        neurons = len(st.manifest.layers) * st.manifest.d_ffn
        sub = df.filter(df["store"] == name)
        share = {strong: [100 * sub.filter((sub["pattern"] == k) & (sub["strong"] == strong))["n_neurons"].sum()
                          / neurons for k in PATTERNS] for strong in (True, False)}
        x = [j + (i - (len(names) - 1) / 2) * width for j in range(len(PATTERNS))]
        b.bar(x, share[True], width, color=s.colour[name])
        b.bar(x, share[False], width, bottom=share[True], color=s.colour[name], alpha=0.45, hatch="//")
    b.set_xticks(range(len(PATTERNS)))
    b.set_xticklabels(PATTERNS, fontsize=8)
    b.set_ylabel("positional neurons (% of the store's neurons; weak hatched)")
    b.set_title("(b) by pattern", fontsize=10)
    b.grid(axis="y", alpha=0.3)
    if not df.height:
        note(a, "no positional neurons in these stores")


def _massive(fig, df, s: _Series) -> None:
    """Top-1 |h| of the residual stream per layer (solid) and the sequence median |h| (dotted), a
    colour per store, against depth, on a log scale."""
    ax = fig.subplots()
    for name, sub in s.each(df):
        ax.plot(depths(sub), sub["top1"].to_list(), "-", marker="o", ms=4, color=s.colour[name],
                label=s.label[name])
        ax.plot(depths(sub), sub["median_abs"].to_list(), ":", color=s.colour[name])
    _depth_axis(ax)
    ax.set_yscale("log")
    ax.set_ylabel("|h| of the residual stream (log scale): largest (solid), median (dotted)")
    ax.legend(frameon=False, fontsize=8)
    if not df.height:
        note(ax, "no residual-stream capture in these stores")


FIGURES: dict[str, Figure] = {f.name: f for f in [
    Figure("fig1a", f"{PAPER}, Figure 1a", "Dead neurons by relative depth, across models", "across_dead_freq",
           _lines("dead neurons (% of the layer)", "dead_pct")),
    Figure("fig1b", f"{PAPER}, Figure 1b", "Mean firing frequency of alive neurons by relative depth, across models",
           "across_dead_freq", _lines("firing frequency (% of tokens, mean over alive neurons)", "mean_freq_alive",
                                      pct=True)),
    Figure("fig3a", f"{PAPER}, Figure 3a", "Token-detecting neurons by relative depth, across models",
           "across_detectors", _lines("token-detecting neurons per layer", "n_token_detectors",
                                      empty="no token detectors"), criteria=("token_detector",)),
    Figure("fig3b", f"{PAPER}, Figure 3b", "Tokens with a detecting neuron by relative depth, across models",
           "across_detectors", _lines("tokens with a detecting neuron", "n_tokens", empty="no token detectors",
                                      dashed="n_tokens_cumulative", dashed_label="solid: per layer, dashed: cumulative"),
           criteria=("token_detector",)),
    Figure("fig8", f"{PAPER}, §5 / Figures 7-8", "Positional neurons by relative depth and pattern, across models",
           "across_positional", _positional, criteria=("positional",)),
    Figure("fig14", f"{PAPER}, Figure 14", "Trigram-detecting neurons by relative depth, across models",
           "across_detectors", _lines("trigram-detecting neurons per layer (n-gram layers)", "n_trigram_detectors",
                                      empty="no trigram detectors"), criteria=("trigram_detector",)),
    Figure("massive-top", f"{SUN}, Figures 1-2", "Largest magnitudes of the residual stream by relative depth, "
           "across models", "across_massive_by_depth", _massive, needs=("capture",)),
]}


def available(stores, fig: Figure) -> str | None:
    """None if some store can draw the figure, else why none can."""
    if "capture" in fig.needs and not any("resid" in st.manifest.capture for st in stores.handles.values()):
        return "no store has a residual-stream capture (ingested with --capture none)"
    return None


def _thresholds_said(stores, fig: Figure, params: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """What the figure's criteria say at each store's thresholds (one sentence when they agree), and
    the labels of the first store's (for axis labels)."""
    per: dict[str, list[str]] = {}
    first = None
    for name, st in stores.handles.items():
        values = drawn_at(st, fig, params)
        first = first or labels(values)
        said = criteria(values)
        per.setdefault("; ".join(said[c] for c in fig.criteria if c in said), []).append(name)
    if len(per) <= 1:
        return next(iter(per), ""), first or {}
    return " | ".join(f"{', '.join(names)}: {text}" for text, names in per.items() if text), first or {}


def _stores_line(stores) -> str:
    """'NAME: MODEL on CORPUS, N tokens, fired = RULE' of each store; what they share said once."""
    parts = {n: describe(st).split(" on ", 1) for n, st in stores.handles.items()}
    rest = {p[1] for p in parts.values() if len(p) == 2}
    if len(rest) == 1 and all(len(p) == 2 for p in parts.values()):
        return ", ".join(f"{n}: {p[0]}" for n, p in parts.items()) + f"; each on {rest.pop()}"
    return "; ".join(f"{n}: {' on '.join(p)}" for n, p in parts.items())


def render(stores, name: str, params: dict[str, Any] | None = None):
    """One figure of FIGURES over the stores as a matplotlib Figure (the caller closes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..errors import InputError

    fig_def = FIGURES.get(name)
    if fig_def is None:
        raise InputError(f"figure: with several stores, expected one of {', '.join(FIGURES)} or 'all', got {name!r}")
    params = dict(params or {})
    stores = stores.with_rule(params.pop("rule", None))
    why = available(stores, fig_def)
    if why:
        raise InputError(f"{name}: cannot draw: {why}")
    df = stores.query(fig_def.query, params or None)
    said, first = _thresholds_said(stores, fig_def, params)
    title = caption(fig_def)[0]
    lacking = [n for n, st in stores.handles.items() if "capture" in fig_def.needs and "resid" not in st.manifest.capture]
    wide = fig_def.name == "fig8"
    width = 110 if wide else 90
    fig = plt.figure(figsize=(13, 6.5) if wide else (9, 5.8), dpi=110, layout="constrained")
    try:
        fig_def.draw(fig, df, _Series(stores, first))
        stores_line = _stores_line(stores)
        if lacking:
            stores_line += f" (not drawn, no capture: {', '.join(lacking)})"
        fig.suptitle("\n".join([f"{title} (after {fig_def.paper})", *([textwrap.fill(said, width)] if said else []),
                                textwrap.fill(stores_line, width)]), fontsize=10)
    except BaseException:
        plt.close(fig)
        raise
    return fig


def list_lines() -> list[str]:
    return [f"{f.name:14s} {f.paper}: {f.title} (query {f.query})" for f in FIGURES.values()]
