"""The explorer's pages as data. Every number a page (or its /api/ twin) shows comes from
here: the store's SQL views through `actdb.Store` (bound parameters, the store's confinement,
the serve time limit) and its masks. The route handlers in app.py only pick the function and
render its dict as HTML or JSON.

Most telling contexts (a neuron's page, page 1): each token row where the neuron fires is
scored by P(fires | its token) over the whole store, the share of that token's occurrences on
which the neuron fires (how much the token alone explains the fire); ties go to the context
with more fires of the neuron within its window, then to the earlier row. Later pages are a
random sample of the other fires, seeded by (--seed, layer, neuron), so a page reads the same
every time.
"""
from __future__ import annotations

import io
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError, NotFound, QueryMemory, QueryTimeout
from ..query.connection import connect
from ..query.handle import Store
from ..settings import ServeSettings


def jsonable(v: Any) -> Any:
    """A DuckDB/Polars value as JSON: NaN and inf as null, lists and dicts kept, the rest as text."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, np.generic):
        return jsonable(v.item())
    return str(v)


def _records(df) -> list[dict[str, Any]]:
    return [{k: jsonable(v) for k, v in r.items()} for r in df.iter_rows(named=True)]


class _ConsoleStore(Store):
    """The console's own database, one DuckDB thread: a long console query takes one core
    and leaves the others to the pages; its memory is capped at --memory-mb, so one query
    cannot grow the server without bound."""

    def __init__(self, path, rule: str | None, memory_mb: float) -> None:
        super().__init__(path, rule=rule)
        self.memory_mb = memory_mb

    def _connect(self):
        return connect(self, threads=1, memory_mb=self.memory_mb)


class Explorer:
    """One store as the explorer sees it: a per-thread handle (each request thread gets its
    own DuckDB cursor on the one database with the views, so a long console query never
    blocks another page), the serve settings, and caches of what never changes in a
    read-only store (token arrays, vocabulary, figures)."""

    def __init__(self, store, name: str, settings: ServeSettings) -> None:
        self.base, self.name, self.s = store, name, settings
        self.manifest = store.manifest
        self.rule = store.rule
        self.siblings: list[tuple[str, str]] = []   # (rule, explorer name) of the store's other rules served
        # every view made now (a lazy connection makes a view when a statement names it), on
        # the one connection whose cursors the request threads use
        self.views = store.views()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._generation = store.generation
        self._console = None
        self._probe = None
        self._reset_caches()

    def _reset_caches(self) -> None:
        """Forget what was read from the index (a rebuild swapped in another one)."""
        self._arrays: dict[str, np.ndarray] | None = None
        self._vocab: list[str] | None = None
        self._figures: dict[str, bytes] = {}
        self._summary: dict[str, Any] | None = None
        self._token_counts: dict[int, int] | None = None
        self._layers: OrderedDict[int, Any] = OrderedDict()
        self._by_text: tuple[dict[str, list[int]], dict[str, list[int]]] | None = None

    def rule_data(self) -> dict[str, Any]:
        """The handle's fire rule in words (SPEC §1.1 for sign, §1.8 for the magnitude rules), and
        the explorers of the same store under its other rules."""
        rec = {r.name: r for r in self.manifest.fire_rules}.get(self.rule)
        words = self.manifest.fire_rule if rec is None or rec.name == "sign" else rec.definition
        return {"rule": self.rule, "fire_rule": words,
                "other_rules": [{"rule": r, "store": n} for r, n in self.siblings]}

    # ------------------------------------------------------------ store access
    def st(self, console: bool = False):
        """This thread's handle on the store (a cursor of the shared connection). The console
        gets its own database (opened on first use): DuckDB queues the tasks of one database's
        statements on one thread pool, where a long console query would hold up every page."""
        key = "console" if console else "store"
        h = getattr(self._local, key, None)
        if h is None:
            if console:
                with self._lock:
                    if self._console is None:
                        console = _ConsoleStore(self.base.path, self.base.rule, self.s.memory_mb)
                        console.views()   # every view made now, on the connection its cursors share
                        self._console = console
                base = self._console
            else:
                base = self.base
            h = base.thread_handle()
            setattr(self._local, key, h)
        h._db()   # the index may have been rebuilt: the caches below are of the old one
        if self.base.generation != self._generation:
            with self._lock:
                if self.base.generation != self._generation:
                    self._reset_caches()
                    self._generation = self.base.generation
        return h

    def q(self, sql: str, **params: Any):
        """A page's query: bound parameters, the serve time limit; a Polars DataFrame."""
        return self.st().sql(sql, params or None, timeout=self.s.timeout)

    def arrays(self) -> dict[str, np.ndarray]:
        """Token columns in row order (ids, seq, pos, doc) and each row's sequence bounds."""
        if self._arrays is None:
            with self._lock:
                if self._arrays is None:
                    t = self.q("SELECT token_id, seq, pos, doc FROM tokens ORDER BY row")
                    ids = t["token_id"].to_numpy().astype(np.int64)
                    seq = t["seq"].to_numpy().astype(np.int64)
                    pos = t["pos"].to_numpy().astype(np.int64)
                    start = np.arange(len(ids)) - pos
                    seq_len = np.bincount(seq) if len(seq) else np.zeros(0, np.int64)
                    self._arrays = {"ids": ids, "seq": seq, "pos": pos, "doc": t["doc"].to_numpy(),
                                    "start": start, "end": start + seq_len[seq] - 1,
                                    "counts": np.bincount(ids, minlength=len(self.vocab()))}
        return self._arrays

    def vocab(self) -> list[str]:
        if self._vocab is None:
            v = self.q("SELECT token_id, token FROM vocab ORDER BY token_id")
            out = [""] * (int(v["token_id"].max()) + 1 if v.height else 0)
            for i, t in zip(v["token_id"].to_list(), v["token"].to_list()):
                out[i] = t if t is not None else f"#{i}"
            self._vocab = out
        return self._vocab

    def token_counts(self) -> dict[int, int]:
        """token_id -> occurrences as the index counts them (the token_counts view: every row
        but the BOS position), the denominator of P(fires | token)."""
        if self._token_counts is None:
            tc = self.q("SELECT token_id, count FROM token_counts")
            self._token_counts = dict(zip(tc["token_id"].to_list(), tc["count"].to_list()))
        return self._token_counts

    def token_text(self, token_id: int) -> str:
        v = self.vocab()
        return v[token_id] if 0 <= token_id < len(v) else f"#{token_id}"

    def probe(self):
        if self._probe is None:
            from .probe import Probe

            self._probe = Probe(self.base, self.s)
        return self._probe

    # ------------------------------------------------------------ checks
    def check_layer(self, layer: int) -> None:
        if layer not in self.manifest.layers:
            raise NotFound(f"layer {layer}: not recorded in store {self.name} (recorded layers: "
                           f"{', '.join(map(str, self.manifest.layers))})")

    def check_neuron(self, layer: int, neuron: int) -> None:
        self.check_layer(layer)
        if not 0 <= neuron < self.manifest.d_ffn:
            raise NotFound(f"neuron {layer}:{neuron}: not in store {self.name} (neurons 0..{self.manifest.d_ffn - 1})")


# ---------------------------------------------------------------- stores

def figures(ex: Explorer) -> list[dict[str, str]]:
    """The paper figures this store can draw, with where to get each as PNG."""
    from ..presentation.plot import FIGURES, available

    return [{"name": f.name, "title": f.title, "paper": f.paper, "query": f.query,
             "png": f"/s/{ex.name}/figure/{f.name}.png"} for f in FIGURES.values() if available(ex.st(), f) is None]


def figure_png(ex: Explorer, name: str) -> bytes:
    """One figure as PNG bytes, drawn once (matplotlib is not thread-safe: one at a time)."""
    from ..presentation.plot import FIGURES, available, render

    fig_def = FIGURES.get(name)
    if fig_def is None or available(ex.st(), fig_def) is not None:
        raise NotFound(f"figure {name!r}: not drawable from store {ex.name} "
                       f"(figures: {', '.join(f['name'] for f in figures(ex))})")
    if name not in ex._figures:
        import matplotlib.pyplot as plt

        with _MPL:
            if name not in ex._figures:
                fig = render(ex.st(), name)
                try:
                    buf = io.BytesIO()
                    fig.savefig(buf, format="png")
                finally:
                    plt.close(fig)
                ex._figures[name] = buf.getvalue()
    return ex._figures[name]


_MPL = threading.Lock()


def store_summary(ex: Explorer) -> dict[str, Any]:
    """Model, fire rule, corpus and domains, tokens and sequences, the report's headline
    numbers, the per-layer table and the figures of one store. Computed once per server: a
    store never changes under its readers (the headline alone is a dozen queries)."""
    if ex._summary is None:
        with ex._lock:
            if ex._summary is None:
                ex._summary = _store_summary(ex)
    return ex._summary


def _store_summary(ex: Explorer) -> dict[str, Any]:
    from ..presentation.report import headline

    m = ex.manifest
    doms = ex.q("SELECT domain, n AS tokens FROM domain_counts ORDER BY n DESC, domain")
    layers = ex.q("SELECT layer, n_neurons, n_dead, dead_frac, mean_freq_alive FROM layer_stats ORDER BY layer")
    return {
        "name": ex.name, "path": str(ex.base.path), "model": m.model, "model_class": m.model_class,
        "family": m.family, **ex.rule_data(), "n_layers": m.n_layers, "layers": list(m.layers),
        "d_ffn": m.d_ffn, "n_tokens": m.n_tokens, "n_sequences": m.n_sequences, "n_docs": m.n_docs,
        "seq_len": m.seq_len, "mode": m.mode,
        "corpus": [{"path": c.path, "bytes": c.bytes} for c in m.corpus],
        "domains": _records(doms),
        "headline": [{"what": k, "value": v} for k, v in headline(ex.st())],
        "layer_stats": _records(layers),
        "figures": figures(ex),
    }


def stores_page(explorers: list[Explorer]) -> dict[str, Any]:
    return {"stores": [store_summary(ex) for ex in explorers]}


# ---------------------------------------------------------------- layer

# column -> (heading, SQL name) of the layer table; sorting takes only these names
LAYER_COLUMNS: dict[str, str] = {
    "neuron": "neuron", "fires": "fires", "freq": "frequency", "dead": "dead",
    "cov1": "coverage n=1", "cov2": "coverage n=2", "cov3": "coverage n=3", "detector": "detector",
    "mi": "positional MI", "pattern": "positional pattern", "massive": "massive activations",
}

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
PATTERNS = ("oscillatory", "both extremes", "one extreme", "other")
DETECTORS = ("token", "trigram")


@dataclass(frozen=True)
class LayerQuery:
    """The layer table's sort, filters and page, as read from the URL."""
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
        """The URL query of this table state (with `change` applied), empty filters left out."""
        d = {**self.__dict__, **change}
        out = {}
        for k, v in d.items():
            if v is None or (k == "sort" and v == "neuron") or (k == "page" and v == 1) or (k == "desc" and not v):
                continue
            out[k] = ("1" if v else "0") if isinstance(v, bool) else str(v)
        return out


def layer_table(ex: Explorer, layer: int):
    """A layer's neuron table from the views (one statement), kept for the last few layers
    asked for: sorting, filtering and paging one layer then need no new query."""
    with ex._lock:
        df = ex._layers.get(layer)
        if df is not None:
            ex._layers.move_to_end(layer)
            return df
    has_massive = "massive_activations" in ex.views and "ffn" in ex.manifest.capture
    df = ex.q(_LAYER_SQL.format(massive=_MASSIVE_FFN if has_massive else _MASSIVE_NONE), layer=layer)
    with ex._lock:
        ex._layers[layer] = df
        while len(ex._layers) > LAYERS_KEPT:
            ex._layers.popitem(last=False)
    return df


LAYERS_KEPT = 8


def layer_page(ex: Explorer, layer: int, lq: LayerQuery) -> dict[str, Any]:
    """A layer's neurons: fires, frequency, dead, coverage n=1..3, detector, positional MI and
    pattern, massive FFN activations; filtered, sorted (nulls last, ties by neuron) and paged."""
    import polars as pl

    ex.check_layer(layer)
    has_massive = "massive_activations" in ex.views and "ffn" in ex.manifest.capture
    df = layer_table(ex, layer)
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
    size = ex.s.page_size
    total = df.height
    pages = max(1, -(-total // size))
    if lq.page > pages:
        raise NotFound(f"page {lq.page}: the table of layer {layer} has {pages} page(s)")
    rows = _records(df.slice((lq.page - 1) * size, size))
    return {"store": ex.name, "layer": layer, "layers": list(ex.manifest.layers), "columns": LAYER_COLUMNS,
            "rows": rows, "total": total, "page": lq.page, "pages": pages, "page_size": size,
            "query": lq.args(), "has_massive": has_massive, "patterns": list(PATTERNS),
            "d_ffn": ex.manifest.d_ffn, "n_tokens": ex.manifest.n_tokens}


# ---------------------------------------------------------------- neuron

def _context(ex: Explorer, mask: np.ndarray, r: int) -> dict[str, Any]:
    """The tokens around fire row r within its sequence, each with whether the neuron fired."""
    a = ex.arrays()
    w = ex.s.context_tokens
    lo, hi = max(int(a["start"][r]), r - w), min(int(a["end"][r]), r + w)
    toks = [{"row": x, "text": ex.token_text(int(a["ids"][x])), "fired": bool(mask[x]), "center": x == r}
            for x in range(lo, hi + 1)]
    return {"row": r, "seq": int(a["seq"][r]), "pos": int(a["pos"][r]), "doc": int(a["doc"][r]), "tokens": toks,
            "fires_in_window": sum(t["fired"] for t in toks)}


def telling_order(ex: Explorer, mask: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fire rows in "most telling" order (module docstring) and each row's P(fires | token)."""
    a = ex.arrays()
    ids = a["ids"][rows]
    fires_tok = np.bincount(ids, minlength=len(a["counts"]))
    p = fires_tok[ids] / a["counts"][ids]
    w = ex.s.context_tokens
    cum = np.r_[0, np.cumsum(mask, dtype=np.int64)]
    lo = np.maximum(a["start"][rows], rows - w)
    hi = np.minimum(a["end"][rows], rows + w)
    density = cum[hi + 1] - cum[lo]
    order = np.lexsort((rows, -density, -p))
    return rows[order], p[order]


_NEURON_SQL = """
SELECT n.fires, n.freq, n.dead, td.tokens AS td_tokens, td.token_ids AS td_ids, td.share AS td_share,
       gd.ngrams AS gd_ngrams, gd.share AS gd_share, pn.mi, pn.pattern, pn.strong
FROM (SELECT fires, freq, dead FROM neurons WHERE layer = $l AND neuron = $n) n
LEFT JOIN (SELECT tokens, token_ids, share FROM token_detectors WHERE layer = $l AND neuron = $n) td ON true
LEFT JOIN (SELECT ngrams, share FROM trigram_detectors WHERE layer = $l AND neuron = $n) gd ON true
LEFT JOIN (SELECT mi, pattern, strong FROM positional_neurons WHERE layer = $l AND neuron = $n) pn ON true
"""


_NEURON_PARTS = {  # a neuron page's independent queries (name -> SQL over $l, $n, $k), run side by side
    "one": _NEURON_SQL,
    "domains": "SELECT domain, fires, freq FROM neuron_domains WHERE layer = $l AND neuron = $n ORDER BY freq DESC, domain",
    "coverage": "SELECT n, n_covering, n_distinct, fires FROM coverage WHERE layer = $l AND neuron = $n ORDER BY n",
    "top": "SELECT token_id, fires FROM neuron_tokens WHERE layer = $l AND neuron = $n ORDER BY rank LIMIT $k",
    "positions": """SELECT c.pos, p.freq_full FROM position_counts c
                    LEFT JOIN (SELECT pos, freq_full FROM neuron_positions WHERE layer = $l AND neuron = $n) p USING (pos)
                    WHERE c.n_full > 0 ORDER BY c.pos""",
    "projection": "SELECT token_id, score, rank FROM vocab_projection_all WHERE layer = $l AND neuron = $n "
                  "AND abs(rank) <= $k ORDER BY rank",
}
_POOL = None


def _side_by_side(jobs: dict[str, Any]) -> dict[str, Any]:
    """Run callables in worker threads (each with its own cursor, see Explorer.st): DuckDB
    releases the GIL, so a page's independent queries overlap instead of adding up."""
    global _POOL
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="actdb-page")
    futures = {k: _POOL.submit(fn) for k, fn in jobs.items()}
    return {k: f.result() for k, f in futures.items()}


def neuron_page(ex: Explorer, layer: int, neuron: int, page: int = 1) -> dict[str, Any]:
    """Everything the store knows about one neuron (SPEC §6), contexts paged."""
    from ..presentation.card import trigram_texts

    ex.check_neuron(layer, neuron)
    if page < 1:
        raise InputError(f"page: expected 1 or more, got {page}")
    m = ex.manifest
    parts = [k for k in _NEURON_PARTS if k != "projection" or "vocab_projection" in ex.views]
    jobs: dict[str, Any] = {k: (lambda sql=_NEURON_PARTS[k]: _records(ex.q(sql, l=layer, n=neuron, k=ex.s.top)
                                                                       if "$k" in sql else ex.q(sql, l=layer, n=neuron)))
                            for k in parts}
    jobs["contexts"] = lambda: neuron_contexts(ex, layer, neuron, page)
    r = _side_by_side(jobs)
    one = r["one"][0]
    out: dict[str, Any] = {"store": ex.name, "layer": layer, "neuron": neuron, "model": m.model,
                           **ex.rule_data(), "n_tokens": m.n_tokens,
                           **{k: one[k] for k in ("fires", "freq", "dead")},
                           "domains": r["domains"], "coverage": r["coverage"]}
    out["token_detector"] = {"tokens": one["td_tokens"], "token_ids": one["td_ids"], "share": one["td_share"]} \
        if one["td_ids"] is not None else None
    if one["gd_ngrams"] is not None:
        grams = one["gd_ngrams"]
        out["trigram_detector"] = {"trigrams": trigram_texts(ex.st(), grams[:ex.s.top]), "n": len(grams),
                                   "share": one["gd_share"]}
    else:
        out["trigram_detector"] = None
    out["positional"] = {k: one[k] for k in ("mi", "pattern", "strong")} if one["mi"] is not None else None
    counts = ex.token_counts()
    out["top_tokens"] = [{**t, "token": ex.token_text(t["token_id"]), "count": counts[t["token_id"]],
                          "p_fire": t["fires"] / counts[t["token_id"]]} for t in r["top"]]
    out["positions"] = [{"pos": p["pos"], "freq": p["freq_full"] or 0.0} for p in r["positions"]]
    if "projection" in r:
        recs = [{**x, "token": ex.token_text(x["token_id"])} for x in r["projection"]]
        out["promoted"] = [x for x in recs if x["rank"] > 0]
        out["suppressed"] = sorted((x for x in recs if x["rank"] < 0), key=lambda x: x["score"])
    else:
        out["promoted"] = out["suppressed"] = None
    out.update(r["contexts"])
    out["prev"], out["next"] = _neighbours(ex, layer, neuron)
    out["probe"] = ex.probe().status()
    return out


def neuron_contexts(ex: Explorer, layer: int, neuron: int, page: int = 1) -> dict[str, Any]:
    """Page 1: the most telling contexts; pages 2..: a seeded random sample of the other fires."""
    if page < 1:
        raise InputError(f"page: expected 1 or more, got {page}")
    mask = ex.st().neuron(layer, neuron)
    rows = np.flatnonzero(mask)
    k = ex.s.contexts
    n_pages = 1 + -(-max(0, len(rows) - k) // k)
    if page > n_pages:
        raise NotFound(f"contexts page {page} of neuron {layer}:{neuron}: it has {n_pages} page(s)")
    ordered, p = telling_order(ex, mask, rows)
    if page == 1:
        pick, how = ordered[:k], "most telling"
        probs = p[:k]
    else:
        rest = ordered[k:]
        rng = np.random.default_rng([ex.s.seed, layer, neuron])
        sample = rng.permutation(len(rest))[(page - 2) * k:(page - 1) * k]
        pick, how, probs = rest[sample], "random sample", p[k:][sample]
    ctx = []
    for r, pr in zip(pick.tolist(), probs.tolist()):
        c = _context(ex, mask, r)
        c["p_fire_token"] = pr
        ctx.append(c)
    return {"contexts": ctx, "contexts_kind": how, "contexts_page": page, "contexts_pages": n_pages,
            "n_fire_rows": int(len(rows))}


def _neighbours(ex: Explorer, layer: int, neuron: int) -> tuple[dict | None, dict | None]:
    layers = list(ex.manifest.layers)
    i, d = layers.index(layer), ex.manifest.d_ffn
    prev = {"layer": layer, "neuron": neuron - 1} if neuron > 0 else \
        ({"layer": layers[i - 1], "neuron": d - 1} if i > 0 else None)
    nxt = {"layer": layer, "neuron": neuron + 1} if neuron < d - 1 else \
        ({"layer": layers[i + 1], "neuron": 0} if i + 1 < len(layers) else None)
    return prev, nxt


# ---------------------------------------------------------------- token

def find_tokens(ex: Explorer, text: str) -> list[int]:
    """Token ids whose text (the vocab view's) is `text`; else the same ignoring case and
    surrounding space (at most 50)."""
    if ex._by_text is None:
        exact: dict[str, list[int]] = {}
        loose: dict[str, list[int]] = {}
        for i, t in enumerate(ex.vocab()):
            exact.setdefault(t, []).append(i)
            loose.setdefault(t.strip().lower(), []).append(i)
        ex._by_text = (exact, loose)
    exact, loose = ex._by_text
    return exact.get(text) or loose.get(text.strip().lower(), [])[:50]


_TOKEN_PARTS = {
    "detectors": """WITH d AS (SELECT layer, neuron, tokens, token_ids, share FROM token_detectors
                               WHERE list_has_any(token_ids, $ids)),
                    f AS (SELECT layer, neuron, token_id, fires FROM neuron_tokens WHERE list_contains($ids, token_id)
                          AND (layer, neuron) IN (SELECT (layer, neuron) FROM d))
                    SELECT d.layer, d.neuron, d.tokens, d.share, f.token_id, f.fires FROM d LEFT JOIN f USING (layer, neuron)
                    ORDER BY d.layer, d.neuron, f.token_id""",
    "top": """SELECT layer, neuron, token_id, fires FROM neuron_tokens WHERE list_contains($ids, token_id)
              ORDER BY fires DESC, layer, neuron LIMIT $k""",
}


def token_page(ex: Explorer, text: str | None = None, token_id: int | None = None) -> dict[str, Any]:
    """Search by token text (exact, else ignoring surrounding space and case) or id: which
    neurons detect it or fire most on it, across layers, with P(fires | token) and fires
    (a neuron's fires on a token: its neuron_tokens row, the top-K tokens of each neuron)."""
    out = {"store": ex.name, "q": text or "", "matches": [], "detectors": [], "top_neurons": [],
           "layers": list(ex.manifest.layers), "probe": ex.probe().status()}
    if token_id is not None:
        ids, what = ([token_id] if 0 <= token_id < len(ex.vocab()) else []), f"token id {token_id}"
    elif text:
        ids, what = find_tokens(ex, text), f"token {text!r}"
    else:
        return out
    if not ids:
        raise NotFound(f"{what}: not in the vocabulary of store {ex.name}")
    counts = ex.token_counts()
    out["matches"] = sorted(({"token_id": i, "token": ex.token_text(i), "count": counts.get(i, 0)} for i in ids),
                            key=lambda m: (-m["count"], m["token_id"]))
    k = ex.s.page_size
    r = _side_by_side({name: (lambda sql=sql: _records(ex.q(sql, ids=ids, **({"k": k} if "$k" in sql else {}))))
                       for name, sql in _TOKEN_PARTS.items()})
    for f in r["detectors"] + r["top"]:
        f["p_fire"] = None if f["fires"] is None else f["fires"] / counts[f["token_id"]]
    out["detectors"], out["top_neurons"] = r["detectors"], r["top"]
    return out


# ---------------------------------------------------------------- document

DOC_MAX_TOKENS = 20000   # a page, not a dump: longer documents are cut, and the page says so


def doc_page(ex: Explorer, doc: int, layer: int | None = None, neuron: int | None = None) -> dict[str, Any]:
    """A document's tokens in order, each where the chosen neuron fired marked."""
    n_docs = ex.manifest.n_docs
    info = ex.base.docs().filter(doc=doc) if doc >= 0 else None
    t = ex.q("SELECT row, seq, pos, token_id, token, domain FROM tokens WHERE doc = $d ORDER BY row LIMIT $k",
             d=doc, k=DOC_MAX_TOKENS + 1)
    if not t.height:
        raise NotFound(f"document {doc}: not in store {ex.name} (documents 0..{n_docs - 1} that left tokens)")
    cut = t.height > DOC_MAX_TOKENS
    t = t.head(DOC_MAX_TOKENS)
    rows = t["row"].to_list()
    fired = [False] * len(rows)
    if neuron is not None or layer is not None:
        if layer is None or neuron is None:
            raise InputError("layer and neuron: expected both or neither")
        ex.check_neuron(layer, neuron)
        m = ex.st().neuron(layer, neuron, rows[0], rows[-1] + 1)
        fired = [bool(m[r - rows[0]]) for r in rows]
    meta = _records(info)[0] if info is not None and info.height else {}
    toks = [{"row": r, "seq": s, "pos": p, "token_id": i, "text": x if x is not None else f"#{i}", "fired": f}
            for r, s, p, i, x, f in zip(rows, t["seq"].to_list(), t["pos"].to_list(), t["token_id"].to_list(),
                                        t["token"].to_list(), fired)]
    return {"store": ex.name, "doc": doc, "doc_id": meta.get("doc_id"), "source": meta.get("source"),
            "domain": t["domain"][0], "layer": layer, "neuron": neuron, "tokens": toks, "cut": cut,
            "n_fired": sum(fired), "layers": list(ex.manifest.layers)}


# ---------------------------------------------------------------- SQL console

def saved_list() -> list[dict[str, Any]]:
    from ..query.catalogue import saved_queries

    return [{"name": q.name, "title": q.title, "reproduces": q.reproduces, "sql": q.sql,
             "params": [{"name": k, "default": jsonable(v), "help": q.param_help.get(k, "")}
                        for k, v in q.params.items()]} for q in saved_queries()]


def console(ex: Explorer, sql: str | None, params: dict[str, str], saved: str | None = None) -> dict[str, Any]:
    """One read-only statement (the engine of `actdb sql`: the store's files only, bound
    parameters) under the serve time limit, answered up to --max-rows rows; past either
    limit it is cut off and says so. An error is part of the answer, as one line."""
    out: dict[str, Any] = {"store": ex.name, "sql": sql or "", "params": params, "saved": saved_list(),
                           "chosen": None, "columns": [], "rows": [], "truncated": False, "error": None,
                           "max_rows": ex.s.max_rows, "timeout": ex.s.timeout}
    if saved:
        chosen = next((q for q in out["saved"] if q["name"] == saved), None)
        if chosen is None:
            raise NotFound(f"saved query {saved!r}: not among {', '.join(q['name'] for q in out['saved'])}")
        out["chosen"] = chosen
        if not sql:
            out["sql"] = sql = chosen["sql"]
            params = out["params"] = {p["name"]: str(p["default"]) for p in chosen["params"]} | params
    if not sql or not sql.strip():
        return out
    import time

    t0 = time.perf_counter()
    try:
        with ex.st(console=True).stream(sql, params, timeout=ex.s.timeout, timeout_hint="--timeout of actdb serve") as res:
            out["columns"] = [{"name": n, "type": t} for n, t in res.columns]
            rows = res.fetch(ex.s.max_rows + 1)
    except InputError as e:   # bad SQL, a refused file, a time or memory limit: the user's to fix
        out["error"] = str(e) + (f" (--memory-mb {ex.s.memory_mb:g} of actdb serve)"
                                 if isinstance(e, QueryMemory) else "")
        out["timed_out"] = isinstance(e, QueryTimeout)
        return out
    out["truncated"] = len(rows) > ex.s.max_rows
    out["rows"] = [[jsonable(v) for v in r] for r in rows[:ex.s.max_rows]]
    out["seconds"] = round(time.perf_counter() - t0, 4)
    return out


def console_csv(answer: dict[str, Any]) -> str:
    import csv

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([c["name"] for c in answer["columns"]])
    for r in answer["rows"]:
        w.writerow(["" if v is None else v for v in r])
    return buf.getvalue()


# ---------------------------------------------------------------- probe

def probe_page(ex: Explorer, text: str, layer: int, neuron: int | None = None) -> dict[str, Any]:
    """Where a neuron (or each neuron of a layer) fires on typed text: one forward."""
    if neuron is None:
        ex.check_layer(layer)
    else:
        ex.check_neuron(layer, neuron)
    res = ex.probe().run(text, layer)
    toks = []
    for i, tid in enumerate(res.ids):
        row = res.fired[i]
        t = {"token_id": tid, "text": ex.token_text(tid)}
        if neuron is None:
            on = np.flatnonzero(row)
            t["n_fired"], t["neurons"] = int(len(on)), on[:64].tolist()
        else:
            t["fired"] = bool(row[neuron])
        toks.append(t)
    return {"store": ex.name, "layer": layer, "neuron": neuron, "tokens": toks, "cut": res.cut,
            "n_tokens": len(res.ids), "device": res.device,
            "n_fired": sum(t["fired"] for t in toks) if neuron is not None else None}
