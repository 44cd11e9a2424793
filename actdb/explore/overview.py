"""A store at a glance: model, fire rule in words, corpus and domains, tokens and sequences,
the headline numbers (the papers' questions answered in one line each; the report's table
too), and dead neurons and frequency per layer."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .explorer import explorer
from .thresholds import labels, thresholds


@dataclass(frozen=True)
class CorpusFile:
    path: str
    bytes: int


@dataclass(frozen=True)
class DomainTokens:
    domain: str
    tokens: int


@dataclass(frozen=True)
class Headline:
    what: str
    value: str


@dataclass(frozen=True)
class LayerStats:
    layer: int
    n_neurons: int
    n_dead: int
    dead_frac: float
    mean_freq_alive: float | None


@dataclass(frozen=True)
class StoreOverview:
    path: str
    model: str
    model_class: str
    family: str
    rule: str                  # the fire rule the views answer for
    fire_rule: str             # ... in words
    n_layers: int
    layers: tuple[int, ...]    # those recorded
    d_ffn: int
    n_tokens: int
    n_sequences: int
    n_docs: int
    seq_len: int
    mode: str
    corpus: tuple[CorpusFile, ...]
    domains: tuple[DomainTokens, ...]   # most tokens first
    headline: tuple[Headline, ...]
    layer_stats: tuple[LayerStats, ...]
    thresholds: dict[str, Any]          # the index was built with (index_info)


def rule_words(manifest, rule: str) -> str:
    """Fire rule `rule` of the store in words (the sign rule as its activation reads it)."""
    rec = {r.name: r for r in manifest.fire_rules}.get(rule)
    return manifest.fire_rule if rec is None or rec.name == "sign" else rec.definition


def store_overview(store) -> StoreOverview:
    """The overview of `store` (an actdb.Store, or an Explorer, which keeps it per index:
    the headline alone is a dozen statements)."""
    ex = explorer(store)

    def make() -> StoreOverview:
        m = ex.manifest
        doms = ex.q("SELECT domain, n AS tokens FROM domain_counts ORDER BY n DESC, domain")
        layers = ex.q("SELECT layer, n_neurons, n_dead, dead_frac, mean_freq_alive FROM layer_stats ORDER BY layer")
        return StoreOverview(
            path=str(ex.base.path), model=m.model, model_class=m.model_class, family=m.family, rule=ex.rule,
            fire_rule=rule_words(m, ex.rule), n_layers=m.n_layers, layers=tuple(m.layers), d_ffn=m.d_ffn,
            n_tokens=m.n_tokens, n_sequences=m.n_sequences, n_docs=m.n_docs, seq_len=m.seq_len, mode=m.mode,
            corpus=tuple(CorpusFile(c.path, c.bytes) for c in m.corpus),
            domains=tuple(DomainTokens(**d) for d in doms.iter_rows(named=True)),
            headline=tuple(Headline(k, v) for k, v in headline(ex)),
            layer_stats=tuple(LayerStats(**r) for r in layers.iter_rows(named=True)), thresholds=thresholds(ex))
    return ex.cached("overview", make)


def headline(store) -> list[tuple[str, str]]:
    """(what, value) rows: the papers' questions answered in one line each, at the thresholds the
    index was built with."""
    ex = explorer(store)
    q = ex.q
    rows: list[tuple[str, str]] = []
    m = ex.manifest
    rows.append(("tokens / sequences", f"{m.n_tokens:,} / {m.n_sequences:,} (seq_len {m.seq_len}, {m.mode})"))
    rows.append(("neurons", f"{len(m.layers)} layers x {m.d_ffn} = {len(m.layers) * m.d_ffn:,}"))
    rows.append(("fire rule", f"`{ex.rule}`: {m.rule_record(ex.rule).definition}"
                 + (f" (recorded: {', '.join(m.rules)})" if len(m.rules) > 1 else "")))
    d = q("SELECT sum(n_dead) AS dead, sum(n_neurons) AS n, max(dead_frac) AS worst, "
          "arg_max(layer, dead_frac) AS worst_layer, avg(mean_freq_alive) AS freq FROM layer_stats").row(0, named=True)
    rows.append(("dead neurons", f"{d['dead']:,} of {d['n']:,} ({100 * d['dead'] / d['n']:.2f} %); most in layer "
                                 f"{d['worst_layer']} ({100 * d['worst']:.1f} %)"))
    rows.append(("mean firing frequency of alive neurons", f"{100 * (d['freq'] or 0):.1f} % of tokens (mean over layers)"))
    t = thresholds(ex)   # the thresholds the index was built with
    lab = labels(t)
    c = q("SELECT count(*) FILTER (WHERE n_covering <= $k) AS small, count(*) AS n, "
          "median(n_covering) AS med FROM coverage WHERE n = 1", k=t["tok_max_cov"]).row(0, named=True)
    rows.append((f"unigram coverage ({lab['p_cov']})",
                 f"median {c['med'] or 0:,.0f} tokens; {c['small']:,} of {c['n']:,} alive "
                 f"neurons covered by 1-{lab['tok_max_cov']} tokens"))
    n_det = q("SELECT count(*) FROM token_detectors").item()
    tok = q("SELECT count(DISTINCT id) FROM (SELECT unnest(token_ids) AS id FROM token_detectors)").item()
    rows.append(("token detectors", f"{n_det:,} neurons detecting {tok:,} distinct tokens"))
    tri = q("SELECT count(*) FROM trigram_detectors").item()
    rows.append(("trigram detectors", f"{tri:,} neurons (n-gram layers "
                                      f"{', '.join(map(str, q('SELECT layer FROM ngram_layers')['layer'].to_list()))})"))
    views = ex.views()
    if "detector_suppression" in views:
        s = q("SELECT count(*) AS n, avg(suppresses::INT) AS share FROM detector_suppression").row(0, named=True)
        if s["n"]:
            rows.append(("detectors suppressing their triggers", f"{100 * s['share']:.0f} % of {s['n']:,} "
                                                                 "(paper, OPT: over 80 %)"))
    p = q("SELECT pattern, count(*) AS n, count(*) FILTER (WHERE strong) AS strong FROM positional_neurons "
          "GROUP BY pattern ORDER BY n DESC")
    rows.append((f"positional neurons (I > {lab['mi_min']})", ", ".join(f"{r['n']:,} {r['pattern']} ({r['strong']:,} strong)"
                                                                   for r in p.iter_rows(named=True)) or "none"))
    if "massive_activations" in views:
        ma = q("SELECT count(*) AS n, count(DISTINCT dim) AS dims, max(abs(value)) AS top, min(layer) AS first, "
               "avg((pos = 0)::INT) AS first_pos FROM massive_activations").row(0, named=True)
        what = f"massive activations (abs > {lab['abs_min']} and >= {lab['ratio']} x median)"
        if ma["n"]:
            dims = q("SELECT dim FROM massive_activations GROUP BY dim ORDER BY count(*) DESC LIMIT 5")["dim"].to_list()
            rows.append((what, f"{ma['n']:,} in {ma['dims']} dims ({', '.join(map(str, dims))}), up to {ma['top']:,.0f}, "
                               f"from layer {ma['first']}; {100 * ma['first_pos']:.0f} % on position 0"))
        else:
            rows.append((what, "none"))
    return rows
