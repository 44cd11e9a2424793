"""A layer's neuron table: fires, frequency, dead, coverage n=1..3, detector, positional MI and
pattern, massive FFN activations; filtered, sorted (nulls last, ties by neuron) and paged.

The table comes from the views in one statement and is kept for the last LAYERS_KEPT layers
asked for, so sorting, filtering and paging a layer ask nothing new."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import InputError, NotFound
from .explorer import explorer
from .thresholds import thresholds

# column -> heading of the layer table; sorting takes only these names
LAYER_COLUMNS: dict[str, str] = {
    "neuron": "neuron", "fires": "fires", "freq": "frequency", "dead": "dead",
    "cov1": "coverage n=1", "cov2": "coverage n=2", "cov3": "coverage n=3", "detector": "detector",
    "mi": "positional MI", "pattern": "positional pattern", "massive": "massive activations",
}
PATTERNS = ("oscillatory", "both extremes", "one extreme", "other")
DETECTORS = ("token", "trigram")
LAYERS_KEPT = 8

_LAYER_SQL = """
WITH nn AS (SELECT neuron, fires, freq, dead FROM neurons WHERE layer = $layer),
cov AS (SELECT neuron, max(n_covering) FILTER (WHERE n = 1) AS cov1, max(n_covering) FILTER (WHERE n = 2) AS cov2,
               max(n_covering) FILTER (WHERE n = 3) AS cov3 FROM coverage WHERE layer = $layer GROUP BY neuron),
td AS (SELECT neuron FROM token_detectors WHERE layer = $layer),
gd AS (SELECT neuron FROM trigram_detectors WHERE layer = $layer),
pn AS (SELECT neuron, mi, pattern, strong FROM positional_neurons_at(mi_min := 0) WHERE layer = $layer),
mm AS ({massive}),
t AS (SELECT nn.neuron, nn.fires, nn.freq, nn.dead, cov.cov1, cov.cov2, cov.cov3,
             CASE WHEN td.neuron IS NOT NULL AND gd.neuron IS NOT NULL THEN 'token+trigram'
                  WHEN td.neuron IS NOT NULL THEN 'token' WHEN gd.neuron IS NOT NULL THEN 'trigram' END AS detector,
             pn.mi, CASE WHEN pn.mi > (SELECT mi_min FROM index_info) THEN pn.pattern END AS pattern,
             CASE WHEN pn.mi > (SELECT mi_min FROM index_info) THEN pn.strong END AS strong, mm.massive
      FROM nn LEFT JOIN cov USING (neuron) LEFT JOIN td USING (neuron) LEFT JOIN gd USING (neuron)
      LEFT JOIN pn USING (neuron) LEFT JOIN mm USING (neuron))
SELECT * FROM t ORDER BY neuron
"""
_MASSIVE_FFN = ("SELECT dim AS neuron, count(*) AS massive FROM massive_activations_at(source := 'ffn') "
                "WHERE layer = $layer GROUP BY dim")
_MASSIVE_NONE = "SELECT NULL::BIGINT AS neuron, NULL::BIGINT AS massive WHERE false"


@dataclass(frozen=True)
class LayerQuery:
    """The layer table's sort, filters and page (as a URL gives them: LayerQuery.parse)."""
    sort: str = "neuron"
    desc: bool = False
    dead: bool | None = None
    min_freq: float | None = None
    max_freq: float | None = None
    max_cov1: int | None = None
    detector: str | None = None      # any | none | token | trigram
    pattern: str | None = None       # any | one of PATTERNS
    massive: bool | None = None
    page: int = 1

    @classmethod
    def parse(cls, args: dict[str, str]) -> "LayerQuery":
        """From text arguments; a bad one is an InputError naming it."""
        def num(name: str, conv):
            v = (args.get(name) or "").strip()
            if not v:
                return None
            try:
                return conv(v)
            except ValueError:
                raise InputError(f"{name}: expected a number, got {v!r}") from None

        def flag(name: str) -> bool | None:
            v = (args.get(name) or "").strip().lower()
            if v in ("", "any"):
                return None
            if v in ("1", "true", "yes"):
                return True
            if v in ("0", "false", "no"):
                return False
            raise InputError(f"{name}: expected yes, no or any, got {v!r}")

        sort = args.get("sort") or "neuron"
        if sort not in LAYER_COLUMNS:
            raise InputError(f"sort: expected one of {', '.join(LAYER_COLUMNS)}, got {sort!r}")
        det = (args.get("detector") or "").strip() or None
        if det not in (None, "any", "none", *DETECTORS):
            raise InputError(f"detector: expected any, none, token or trigram, got {det!r}")
        pat = (args.get("pattern") or "").strip() or None
        if pat not in (None, "any", *PATTERNS):
            raise InputError(f"pattern: expected any or one of {', '.join(PATTERNS)}, got {pat!r}")
        page = num("page", int) or 1
        if page < 1:
            raise InputError(f"page: expected 1 or more, got {page}")
        return cls(sort=sort, desc=flag("desc") or False, dead=flag("dead"), min_freq=num("min_freq", float),
                   max_freq=num("max_freq", float), max_cov1=num("max_cov1", int), detector=det, pattern=pat,
                   massive=flag("massive"), page=page)

    def args(self, **change: Any) -> dict[str, str]:
        """The text arguments of this table state (with `change` applied), empty filters left out."""
        out = {}
        for k, v in {**asdict(self), **change}.items():
            if v is None or (k == "sort" and v == "neuron") or (k == "page" and v == 1) or (k == "desc" and not v):
                continue
            out[k] = ("1" if v else "0") if isinstance(v, bool) else str(v)
        return out


@dataclass(frozen=True)
class LayerRow:
    neuron: int
    fires: int
    freq: float
    dead: bool
    cov1: int | None
    cov2: int | None
    cov3: int | None
    detector: str | None      # token | trigram | token+trigram
    mi: float | None
    pattern: str | None       # only where the neuron is positional (mi above the recorded mi_min)
    strong: bool | None
    massive: int | None       # massive FFN activations on it (stores captured with resid+ffn)


@dataclass(frozen=True)
class LayerTable:
    layer: int
    rows: tuple[LayerRow, ...]   # the page's rows
    total: int                   # rows after the filters
    page: int
    pages: int
    page_size: int
    has_massive: bool
    thresholds: dict[str, Any]   # the index's, which coverage, detectors and patterns are at


def layer_table(store, layer: int, query: LayerQuery = LayerQuery(), page_size: int = 100) -> LayerTable:
    """Page `query.page` of layer `layer`'s neurons, filtered and sorted as `query` says.
    `store`: an actdb.Store or an Explorer."""
    import polars as pl

    ex = explorer(store)
    ex.check_layer(layer)
    has_massive = "massive_activations" in ex.views() and "ffn" in ex.manifest.capture
    df = ex.recent(("layer", layer), lambda: ex.q(_LAYER_SQL.format(massive=_MASSIVE_FFN if has_massive
                                                                    else _MASSIVE_NONE), layer=layer), LAYERS_KEPT)
    lq = query
    conds = []
    if lq.dead is not None:
        conds.append(pl.col("dead") == lq.dead)
    if lq.min_freq is not None:
        conds.append(pl.col("freq") >= lq.min_freq)
    if lq.max_freq is not None:
        conds.append(pl.col("freq") <= lq.max_freq)
    if lq.max_cov1 is not None:
        conds.append(pl.col("cov1") <= lq.max_cov1)
    if lq.detector is not None:
        det = pl.col("detector")
        conds.append(det.is_not_null() if lq.detector == "any" else det.is_null() if lq.detector == "none"
                     else det.fill_null("").str.contains(lq.detector, literal=True))
    if lq.pattern is not None:
        conds.append(pl.col("pattern").is_not_null() if lq.pattern == "any" else pl.col("pattern") == lq.pattern)
    if lq.massive is not None:
        conds.append((pl.col("massive").fill_null(0) > 0) == lq.massive)
    if conds:
        df = df.filter(pl.all_horizontal(conds))
    if lq.sort != "neuron" or lq.desc:
        df = df.sort([lq.sort, "neuron"], descending=[lq.desc, False], nulls_last=True)
    total = df.height
    pages = max(1, -(-total // page_size))
    if lq.page > pages:
        raise NotFound(f"page {lq.page}: the table of layer {layer} has {pages} page(s)")
    names = [f.name for f in fields(LayerRow)]
    rows = tuple(LayerRow(**{k: r[k] for k in names})
                 for r in df.slice((lq.page - 1) * page_size, page_size).iter_rows(named=True))
    return LayerTable(layer, rows, total, lq.page, pages, page_size, has_massive, thresholds(ex))
