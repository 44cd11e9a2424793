"""The explorer's pages as data: each page function takes the served store and the URL's
values, asks actdb.explore for the facts (frozen dataclasses, each computed there once) and
answers them as one JSON-ready dict, which app.py renders as HTML (templates/) or JSON.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
from typing import Any

from ..errors import NotFound
from ..explore.console import console as run_console
from ..explore.contexts import contexts
from ..explore.document import document, probe_answer
from ..explore.explorer import Explorer
from ..explore.layer import LAYER_COLUMNS, LAYERS_KEPT, PATTERNS, LayerQuery, layer_table
from ..explore.neuron import neuron_facts
from ..explore.overview import rule_words, store_overview
from ..explore.positional import positional_team
from ..explore.thresholds import criteria
from ..explore.tokens import token_facts
from ..settings import ServeSettings


def jsonable(v: Any) -> Any:
    """A value as JSON: a dataclass as a dict, NaN and inf as null, tuples as lists, and any
    other value DuckDB answers (dates, decimals, ...) as text."""
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: jsonable(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    return str(v)


class Served:
    """One store under one fire rule as the server serves it: its explorer (per-thread handles,
    the serve time limit, caches that follow a rebuilt index), its URL name, the same store
    under its other rules, and the probe."""

    def __init__(self, store, name: str, settings: ServeSettings) -> None:
        self.ex = Explorer(store, name, timeout=settings.timeout, threads=True, console_memory_mb=settings.memory_mb)
        self.name, self.s, self.rule = name, settings, store.rule
        self.path = store.path
        self.siblings: list[tuple[str, str]] = []   # (rule, name) of the store's other rules served
        self._probe = None

    def rule_data(self) -> dict[str, Any]:
        """The fire rule in words, and the same store under its other rules."""
        return {"rule": self.rule, "fire_rule": rule_words(self.ex.manifest, self.rule),
                "other_rules": [{"rule": r, "store": n} for r, n in self.siblings]}

    def probe(self):
        if self._probe is None:
            from .probe import Probe

            self._probe = Probe(self.ex.base, self.s)
        return self._probe


# ---------------------------------------------------------------- stores

def figures(sv: Served) -> list[dict[str, str]]:
    """The paper figures this store can draw, titled at the thresholds they are drawn at, with
    where to get each as PNG (once per index)."""
    from ..presentation.plot import FIGURES, available, caption, drawn_at

    def make() -> list[dict[str, str]]:
        st = sv.ex.st()
        return [{"name": f.name, "title": caption(f, drawn_at(st, f))[0], "paper": f.paper, "query": f.query,
                 "png": f"/s/{sv.name}/figure/{f.name}.png"} for f in FIGURES.values() if available(st, f) is None]
    return sv.ex.cached("figures", make)


def figure_png(sv: Served, name: str) -> bytes:
    """One figure as PNG, drawn once per index."""
    from ..presentation.plot import FIGURES, available, png

    fig = FIGURES.get(name)
    if fig is None or available(sv.ex.st(), fig) is not None:
        raise NotFound(f"figure {name!r}: not drawable from store {sv.name} "
                       f"(figures: {', '.join(f['name'] for f in figures(sv))})")
    return sv.ex.cached(("figure", name), lambda: png(sv.ex.st(), name))


def store_summary(sv: Served) -> dict[str, Any]:
    """Model, fire rule, corpus and domains, tokens and sequences, the headline numbers, the
    per-layer table and the figures of one store."""
    o = store_overview(sv.ex)
    return {"name": sv.name, **jsonable(o), **sv.rule_data(), "criteria": list(criteria(o.thresholds).values()),
            "figures": figures(sv)}


def stores_page(served: list[Served]) -> dict[str, Any]:
    return {"stores": [store_summary(sv) for sv in served]}


# ---------------------------------------------------------------- the stores side by side

def compare_figures(compared) -> list[dict[str, str]]:
    """The figures across models the served stores can draw, with where to get each as PNG."""
    from ..presentation.across import FIGURES, available

    return compared.cached("figures", lambda st: [
        {"name": f.name, "title": f.title, "paper": f.paper, "query": f.query, "png": f"/compare/figure/{f.name}.png"}
        for f in FIGURES.values() if available(st, f) is None])


def compare_page(compared) -> dict[str, Any]:
    """The served stores side by side (explore.compare): per store the headline numbers, per layer by
    relative depth, and the figures across models."""
    from ..explore.compare import table

    c = compared.comparison()
    head, rows = table(c)
    return {**jsonable(c), "table": {"head": head, "rows": rows}, "urls": compared.served_names(),
            "figures": compare_figures(compared)}


def compare_png(compared, name: str) -> bytes:
    """One figure across models as PNG, drawn once per index."""
    from ..presentation.plot import png

    names = [f["name"] for f in compare_figures(compared)]
    if name not in names:
        raise NotFound(f"figure {name!r}: not drawable across the served stores (figures: {', '.join(names)})")
    return compared.cached(("figure", name), lambda st: png(st, name))


# ---------------------------------------------------------------- layer

def layer_page(sv: Served, layer: int, lq: LayerQuery) -> dict[str, Any]:
    """A layer's neurons, filtered, sorted and paged (explore.layer)."""
    t = layer_table(sv.ex, layer, lq, sv.s.page_size)
    m = sv.ex.manifest
    return {"store": sv.name, **jsonable(t), "criteria": criteria(t.thresholds), "layers": list(m.layers),
            "columns": LAYER_COLUMNS,
            "query": lq.args(), "patterns": list(PATTERNS), "d_ffn": m.d_ffn, "n_tokens": m.n_tokens}


def team_page(sv: Served, layer: int) -> dict[str, Any]:
    """A layer's positional neurons as a team (explore.positional), kept for the last layers asked for."""
    def make() -> dict[str, Any]:
        t = positional_team(sv.ex, layer)
        return {"store": sv.name, **jsonable(t), "layer": layer, "criteria": criteria(t.thresholds),
                "layers": list(sv.ex.manifest.layers)}
    return sv.ex.recent(("team", layer), make, LAYERS_KEPT)


# ---------------------------------------------------------------- neuron

def neuron_page(sv: Served, layer: int, neuron: int, page: int = 1) -> dict[str, Any]:
    """Everything the store knows about one neuron, its contexts paged."""
    ex, s = sv.ex, sv.s
    ex.check_neuron(layer, neuron)
    ctx = ex.start(lambda: contexts(ex, layer, neuron, page, s.contexts, s.context_tokens, s.seed))
    facts = neuron_facts(ex, layer, neuron, s.top)
    return {"store": sv.name, **sv.rule_data(), **jsonable(facts), "criteria": criteria(facts.thresholds),
            **jsonable(ctx()), "probe": sv.probe().status()}


# ---------------------------------------------------------------- token

def token_page(sv: Served, text: str | None = None, token_id: int | None = None) -> dict[str, Any]:
    """Search by token text (exact, else ignoring surrounding space and case) or id: which
    neurons detect it or fire most on it, across layers (explore.tokens)."""
    out = {"store": sv.name, "q": text or "", "matches": [], "detectors": [], "top_neurons": [],
           "layers": list(sv.ex.manifest.layers), "probe": sv.probe().status()}
    if token_id is None and not text:
        return out
    return {**out, **jsonable(token_facts(sv.ex, text, token_id, sv.s.page_size))}


# ---------------------------------------------------------------- document

def doc_page(sv: Served, doc: int, layer: int | None = None, neuron: int | None = None) -> dict[str, Any]:
    """A document's tokens in order, each where the chosen neuron fired marked."""
    return {"store": sv.name, **jsonable(document(sv.ex, doc, layer, neuron)), "layers": list(sv.ex.manifest.layers)}


# ---------------------------------------------------------------- SQL console

def console(sv: Served, sql: str | None, params: dict[str, str], saved: str | None = None) -> dict[str, Any]:
    """One read-only statement under the serve time and row limits (explore.console)."""
    answer = run_console(sv.ex, sql, params, saved, sv.s.max_rows, " of actdb serve")
    return {"store": sv.name, **jsonable(answer)}


def console_csv(answer: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([c["name"] for c in answer["columns"]])
    for r in answer["rows"]:
        w.writerow(["" if v is None else v for v in r])
    return buf.getvalue()


# ---------------------------------------------------------------- probe

def probe_page(sv: Served, text: str, layer: int, neuron: int | None = None) -> dict[str, Any]:
    """Where a neuron (or each neuron of a layer) fires on typed text: one forward."""
    if neuron is None:
        sv.ex.check_layer(layer)
    else:
        sv.ex.check_neuron(layer, neuron)
    res = sv.probe().run(text, layer)
    answer = probe_answer(sv.ex, res.ids, res.fired, layer, neuron, res.cut, res.device)
    return {"store": sv.name, **jsonable(answer)}
