"""One neuron's facts from the views: fires, frequency and per-domain frequency, coverage,
detector status (a trigram detector's trigrams as text, PAD_MARK for a slot before the sequence
start), top tokens with P(fires | token), the position profile, the positional pattern, the
vocabulary projection, and what it fires together with (cofiring.py). The card (`actdb neuron`)
and the explorer's neuron page show these."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .cofiring import FiresWith, fires_with
from .explorer import Explorer, explorer
from .thresholds import thresholds

PAD_MARK = "∅"   # an n-gram slot before the sequence start; unquoted, so no token reads the same


@dataclass(frozen=True)
class DomainFires:
    domain: str
    fires: int
    freq: float            # fires / the domain's tokens


@dataclass(frozen=True)
class Coverage:
    n: int                 # 1 tokens, 2 bigrams, 3 trigrams
    n_covering: int        # the fewest n-grams covering the recorded share of its fires
    n_distinct: int        # distinct n-grams it fires on
    fires: int             # its fires counted for n-grams (all rows but the BOS position)


@dataclass(frozen=True)
class TokenDetector:
    tokens: tuple[str, ...]
    token_ids: tuple[int, ...]
    share: float           # of its fires on the covered tokens


@dataclass(frozen=True)
class TrigramDetector:
    trigrams: tuple[str, ...]   # the first `top` covered trigrams as text
    n: int                      # every covered trigram
    share: float


@dataclass(frozen=True)
class Positional:
    mi: float
    pattern: str
    strong: bool


@dataclass(frozen=True)
class TopToken:
    token_id: int
    token: str
    fires: int             # the neuron's fires on the token
    count: int             # the token's occurrences (token_counts)
    p_fire: float          # P(fires | token) = fires / count


@dataclass(frozen=True)
class PositionFreq:
    pos: int
    freq: float            # firing frequency at the position, full-length sequences


@dataclass(frozen=True)
class Projected:
    token_id: int
    token: str
    score: float
    rank: int              # 1.. promoted, -1.. suppressed


@dataclass(frozen=True)
class NeighbourId:
    layer: int
    neuron: int


@dataclass(frozen=True)
class NeuronFacts:
    layer: int
    neuron: int
    model: str
    n_tokens: int
    fires: int
    freq: float
    dead: bool
    domains: tuple[DomainFires, ...]
    coverage: tuple[Coverage, ...]
    token_detector: TokenDetector | None
    trigram_detector: TrigramDetector | None
    positional: Positional | None
    top_tokens: tuple[TopToken, ...]
    positions: tuple[PositionFreq, ...]
    promoted: tuple[Projected, ...] | None      # None: the store has no vocabulary projection
    suppressed: tuple[Projected, ...] | None    # most suppressed first
    prev: NeighbourId | None                    # the neuron before, across layers
    next: NeighbourId | None
    fires_with: FiresWith                       # its top neighbours by phi (co-firing)
    thresholds: dict[str, Any]                  # the index's, which coverage and detectors are at


_ONE = """
SELECT n.fires, n.freq, n.dead, td.tokens AS td_tokens, td.token_ids AS td_ids, td.share AS td_share,
       gd.ngrams AS gd_ngrams, gd.share AS gd_share, pn.mi, pn.pattern, pn.strong
FROM (SELECT fires, freq, dead FROM neurons WHERE layer = $l AND neuron = $n) n
LEFT JOIN (SELECT tokens, token_ids, share FROM token_detectors WHERE layer = $l AND neuron = $n) td ON true
LEFT JOIN (SELECT ngrams, share FROM trigram_detectors WHERE layer = $l AND neuron = $n) gd ON true
LEFT JOIN (SELECT mi, pattern, strong FROM positional_neurons WHERE layer = $l AND neuron = $n) pn ON true
"""

_PARTS = {  # a neuron's independent statements (name -> SQL over $l, $n, $k), run side by side
    "one": _ONE,
    "domains": "SELECT domain, fires, freq FROM neuron_domains WHERE layer = $l AND neuron = $n ORDER BY freq DESC, domain",
    "coverage": "SELECT n, n_covering, n_distinct, fires FROM coverage WHERE layer = $l AND neuron = $n ORDER BY n",
    "top": "SELECT token_id, fires FROM neuron_tokens WHERE layer = $l AND neuron = $n ORDER BY rank LIMIT $k",
    "positions": """SELECT c.pos, coalesce(p.freq_full, 0.0) AS freq FROM position_counts c
                    LEFT JOIN (SELECT pos, freq_full FROM neuron_positions WHERE layer = $l AND neuron = $n) p USING (pos)
                    WHERE c.n_full > 0 ORDER BY c.pos""",
    "projection": "SELECT token_id, score, rank FROM vocab_projection_all WHERE layer = $l AND neuron = $n "
                  "AND abs(rank) <= $k ORDER BY rank",
}


def neuron_facts(store, layer: int, neuron: int, top: int = 20) -> NeuronFacts:
    """Everything the views know about one neuron; `top`: top tokens, projected tokens in each
    direction and trigrams shown. `store`: an actdb.Store or an Explorer."""
    ex = explorer(store)
    ex.check_neuron(layer, neuron)
    parts = [k for k in _PARTS if k != "projection" or "vocab_projection" in ex.views()]

    def run(sql: str) -> list[dict[str, Any]]:
        return ex.q(sql, l=layer, n=neuron, **({"k": top} if "$k" in sql else {})).to_dicts()
    jobs = {k: (lambda sql=_PARTS[k]: run(sql)) for k in parts}
    r = ex.side_by_side({**jobs, "fires_with": lambda: fires_with(ex, layer, neuron)})
    one = r["one"][0]
    td = TokenDetector(tuple(one["td_tokens"]), tuple(one["td_ids"]), one["td_share"]) \
        if one["td_ids"] is not None else None
    gd = None
    if one["gd_ngrams"] is not None:
        grams = one["gd_ngrams"]
        gd = TrigramDetector(tuple(trigram_texts(ex, grams[:top])), len(grams), one["gd_share"])
    counts = ex.token_counts()
    top_tokens = tuple(TopToken(t["token_id"], ex.token_text(t["token_id"]), t["fires"], counts[t["token_id"]],
                                t["fires"] / counts[t["token_id"]]) for t in r["top"])
    promoted = suppressed = None
    if "projection" in r:
        proj = [Projected(x["token_id"], ex.token_text(x["token_id"]), x["score"], x["rank"]) for x in r["projection"]]
        promoted = tuple(x for x in proj if x.rank > 0)
        suppressed = tuple(sorted((x for x in proj if x.rank < 0), key=lambda x: x.score))
    prev, nxt = neighbours(ex, layer, neuron)
    return NeuronFacts(
        layer=layer, neuron=neuron, model=ex.manifest.model, n_tokens=ex.manifest.n_tokens,
        fires=one["fires"], freq=one["freq"], dead=one["dead"],
        domains=tuple(DomainFires(**d) for d in r["domains"]), coverage=tuple(Coverage(**c) for c in r["coverage"]),
        token_detector=td, trigram_detector=gd,
        positional=Positional(one["mi"], one["pattern"], one["strong"]) if one["mi"] is not None else None,
        top_tokens=top_tokens, positions=tuple(PositionFreq(**p) for p in r["positions"]),
        promoted=promoted, suppressed=suppressed, prev=prev, next=nxt, fires_with=r["fires_with"],
        thresholds=thresholds(ex))


def trigram_texts(store, ngrams: list[int]) -> list[str]:
    """Trigram ids -> text, e.g. (∅, '<s>', 'The'): tokens quoted, PAD slots as PAD_MARK."""
    if not ngrams:
        return []
    ex = explorer(store)
    ids = dict(ex.q("SELECT ngram, token_ids FROM trigram_counts WHERE list_contains($g, ngram)",
                    g=[int(g) for g in ngrams]).rows())
    return ["(" + ", ".join(PAD_MARK if t is None else repr(ex.token_text(t)) for t in ids[g]) + ")" for g in ngrams]


def neighbours(ex: Explorer, layer: int, neuron: int) -> tuple[NeighbourId | None, NeighbourId | None]:
    """The neurons before and after, across recorded layers."""
    layers = list(ex.manifest.layers)
    i, d = layers.index(layer), ex.manifest.d_ffn
    prev = NeighbourId(layer, neuron - 1) if neuron > 0 else \
        (NeighbourId(layers[i - 1], d - 1) if i > 0 else None)
    nxt = NeighbourId(layer, neuron + 1) if neuron < d - 1 else \
        (NeighbourId(layers[i + 1], 0) if i + 1 < len(layers) else None)
    return prev, nxt
