"""Several stores side by side (the papers' comparisons of model sizes): for each store, under its
fire rule, the headline numbers, and per layer the same by relative depth, each computed once from
the saved queries across models on a query.across.Stores. The report's "Across models" table and
the explorer's comparison page (/compare, /api/compare) show these."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..explore.thresholds import criteria, thresholds
from ..query.across import model_name


@dataclass(frozen=True)
class ModelRow:
    store: str                      # its schema's name
    model: str
    rule: str                       # the fire rule its views answer for
    n_layers: int                   # the model's layers (depth = layer / (n_layers - 1))
    layers: int                     # those recorded
    d_ffn: int
    n_tokens: int
    dead_pct: float                 # dead neurons, % of all recorded neurons
    mean_freq_alive: float | None   # mean over layers of the mean frequency of alive neurons
    token_detectors: int
    detected_tokens: int            # distinct tokens with a detecting neuron in some layer
    trigram_detectors: int | None   # over the n-gram layers; None without any
    positional: int
    positional_strong: int
    massive_top: float | None       # the largest |h| of the residual stream (None: no capture)
    massive_top_layer: int | None
    n_massive: int | None           # massive activations at the store's thresholds
    massive_dims: tuple[int, ...]   # the dimensions holding most of them (up to 5)
    massive_first_layer: int | None
    massive_first_depth: float | None
    massive_share_first: float | None   # share of them on the first token of a sequence
    criteria: tuple[str, ...]           # what the findings mean at the store's thresholds


@dataclass(frozen=True)
class DepthRow:
    store: str
    layer: int
    depth: float | None
    dead_pct: float
    mean_freq_alive: float | None
    token_detectors: int
    detected_tokens: int
    positional: int
    massive_top: float | None


@dataclass(frozen=True)
class Comparison:
    models: tuple[ModelRow, ...]     # in the stores' order
    by_depth: tuple[DepthRow, ...]   # per store, by layer
    same_thresholds: bool            # whether every store is at the same thresholds


def comparison(stores, timeout: float | None = None) -> Comparison:
    """The comparison of the stores of `stores` (a query.across.Stores), each query under `timeout`."""
    def q(name: str):
        return stores.query(name, timeout=timeout)

    dead, det, pos = q("across_dead_freq"), q("across_detectors"), q("across_positional")
    massive, by_depth_top = {}, {}
    if any("resid" in st.manifest.capture for st in stores.handles.values()):   # else no store has the view
        massive = {r["store"]: r for r in q("across_massive").iter_rows(named=True)}
        by_depth_top = {(r["store"], r["layer"]): r["top1"] for r in q("across_massive_by_depth").iter_rows(named=True)}
    models, rows, said = [], [], []
    for name, st in stores.handles.items():
        m = st.manifest
        d = dead.filter(dead["store"] == name)
        t = det.filter(det["store"] == name)
        p = pos.filter(pos["store"] == name)
        mass: dict[str, Any] = massive.get(name) or {}
        tri = [v for v in t["n_trigram_detectors"].to_list() if v is not None]
        freq = [v for v in d["mean_freq_alive"].to_list() if v is not None]
        said.append(criteria(thresholds(st)))
        models.append(ModelRow(
            store=name, model=model_name(m), rule=st.rule, n_layers=m.n_layers, layers=len(m.layers), d_ffn=m.d_ffn,
            n_tokens=m.n_tokens, dead_pct=100 * d["n_dead"].sum() / max(d["n_neurons"].sum(), 1),
            mean_freq_alive=sum(freq) / len(freq) if freq else None,
            token_detectors=int(t["n_token_detectors"].sum()), detected_tokens=int(t["n_tokens_cumulative"].max() or 0),
            trigram_detectors=sum(tri) if tri else None, positional=int(p["n_neurons"].sum()),
            positional_strong=int(p.filter(p["strong"])["n_neurons"].sum()),
            massive_top=mass.get("top_abs"), massive_top_layer=mass.get("top_layer"), n_massive=mass.get("n_massive"),
            massive_dims=tuple(mass.get("top_dims") or ()), massive_first_layer=mass.get("first_layer"),
            massive_first_depth=mass.get("first_depth"), massive_share_first=mass.get("share_first_position"),
            criteria=tuple(said[-1].values())))
        per_layer = {(r["layer"]): r for r in t.iter_rows(named=True)}
        positional = {}
        for r in p.iter_rows(named=True):
            positional[r["layer"]] = positional.get(r["layer"], 0) + r["n_neurons"]
        for r in d.iter_rows(named=True):
            k = r["layer"]
            rows.append(DepthRow(store=name, layer=k, depth=r["depth"], dead_pct=r["dead_pct"],
                                 mean_freq_alive=r["mean_freq_alive"],
                                 token_detectors=per_layer[k]["n_token_detectors"], detected_tokens=per_layer[k]["n_tokens"],
                                 positional=positional.get(k, 0), massive_top=by_depth_top.get((name, k))))
    return Comparison(tuple(models), tuple(rows), all(s == said[0] for s in said))


def _pct(v: float) -> str:
    """A percentage with two decimals, or two significant digits below 0.1 % (a few dead neurons of many)."""
    return f"{v:.2f} %" if v == 0 or v >= 0.1 else f"{v:.2g} %"


def table(c: Comparison) -> tuple[list[str], list[list[str]]]:
    """The comparison as (header, rows) of text: the report's table (the explorer's page shows the same)."""
    head = ["store", "model", "fired", "layers x neurons", "tokens", "dead", "mean frequency of alive neurons",
            "token detectors (tokens)", "trigram detectors", "positional (strong)", "top |h|",
            "massive dims", "massive from layer (depth)", "massive on the first token"]
    out = []
    for r in c.models:
        out.append([r.store, r.model, r.rule, f"{r.layers} of {r.n_layers} x {r.d_ffn:,}", f"{r.n_tokens:,}",
                    _pct(r.dead_pct), "—" if r.mean_freq_alive is None else f"{100 * r.mean_freq_alive:.1f} %",
                    f"{r.token_detectors:,} ({r.detected_tokens:,})",
                    "—" if r.trigram_detectors is None else f"{r.trigram_detectors:,}",
                    f"{r.positional:,} ({r.positional_strong:,})",
                    "—" if r.massive_top is None else f"{r.massive_top:,.4g} (layer {r.massive_top_layer})",
                    ", ".join(map(str, r.massive_dims)) or ("—" if r.n_massive is None else "none"),
                    "—" if r.massive_first_layer is None else f"{r.massive_first_layer} ({r.massive_first_depth:.2f})",
                    "—" if r.massive_share_first is None else f"{100 * r.massive_share_first:.0f} %"])
    return head, out


class Compared:
    """The comparison of the stores a server serves: one query.across.Stores over handles of their
    own (statements one at a time, under a lock, each under the server's time limit), and what is
    made of it kept until a store's index is rebuilt. stores: (name, path, rule) of each; names:
    the server's, made names SQL can give a schema (query.across.named)."""

    def __init__(self, stores: list[tuple[str, Any, str]], timeout: float | None = None) -> None:
        import threading

        self.specs = stores
        self.timeout = timeout
        self._lock = threading.Lock()
        self._stores = None
        self._generation = None
        self._cache: dict[Any, Any] = {}

    def cached(self, key: Any, make: Callable[[Any], Any]) -> Any:
        """make(stores) once per key and index generation of the stores."""
        from ..query.across import named
        from ..query.handle import Store

        with self._lock:
            if self._stores is None:
                self._stores = named([Store(p, rule=r) for _, p, r in self.specs], [n for n, _, _ in self.specs])
            generation = self._stores.refresh()
            if generation != self._generation:
                self._cache.clear()
                self._generation = generation
            if key not in self._cache:
                self._cache[key] = make(self._stores)
            return self._cache[key]

    def comparison(self) -> Comparison:
        return self.cached("comparison", lambda st: comparison(st, self.timeout))

    def served_names(self) -> dict[str, str]:
        """Each store's schema name -> the name the server gave it (its URL name)."""
        return self.cached("names", lambda st: dict(zip(st.names, (n for n, _, _ in self.specs))))
