"""A token's facts: the neurons that detect it and the neurons that fire most on it, across
layers, with fires and P(fires | token). A neuron's fires on a token are its neuron_tokens row
(the top-K tokens of each neuron, index_info.top_k)."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import NotFound
from .explorer import Explorer, explorer

MAX_LOOSE = 50   # matches ignoring case and space, at most


@dataclass(frozen=True)
class TokenMatch:
    token_id: int
    token: str
    count: int             # occurrences (token_counts)


@dataclass(frozen=True)
class DetectingNeuron:
    layer: int
    neuron: int
    tokens: tuple[str, ...]    # every token it detects
    share: float               # of its fires on its covered tokens
    token_id: int | None       # the matched token it fires on (None: not among its top-K)
    fires: int | None
    p_fire: float | None


@dataclass(frozen=True)
class FiringNeuron:
    layer: int
    neuron: int
    token_id: int
    fires: int
    p_fire: float


@dataclass(frozen=True)
class TokenFacts:
    matches: tuple[TokenMatch, ...]        # most frequent first
    detectors: tuple[DetectingNeuron, ...]
    top_neurons: tuple[FiringNeuron, ...]  # most fires on the token first


_DETECTORS = """
WITH d AS (SELECT layer, neuron, tokens, token_ids, share FROM token_detectors WHERE list_has_any(token_ids, $ids)),
     f AS (SELECT layer, neuron, token_id, fires FROM neuron_tokens WHERE list_contains($ids, token_id)
           AND (layer, neuron) IN (SELECT (layer, neuron) FROM d))
SELECT d.layer, d.neuron, d.tokens, d.share, f.token_id, f.fires FROM d LEFT JOIN f USING (layer, neuron)
ORDER BY d.layer, d.neuron, f.token_id"""
_TOP = """SELECT layer, neuron, token_id, fires FROM neuron_tokens WHERE list_contains($ids, token_id)
          ORDER BY fires DESC, layer, neuron LIMIT $k"""


def find_tokens(store, text: str) -> list[int]:
    """Token ids whose text (the vocab view's) is `text`; else the same ignoring case and
    surrounding space (at most MAX_LOOSE)."""
    ex = explorer(store)

    def index() -> tuple[dict[str, list[int]], dict[str, list[int]]]:
        exact: dict[str, list[int]] = {}
        loose: dict[str, list[int]] = {}
        for i, t in enumerate(ex.vocab()):
            exact.setdefault(t, []).append(i)
            loose.setdefault(t.strip().lower(), []).append(i)
        return exact, loose
    exact, loose = ex.cached("tokens_by_text", index)
    return exact.get(text) or loose.get(text.strip().lower(), [])[:MAX_LOOSE]


def token_facts(store, text: str | None = None, token_id: int | None = None, limit: int = 100) -> TokenFacts:
    """The token(s) `text` names (find_tokens) or token `token_id`: which neurons detect it, and
    the `limit` neurons firing most on it. `store`: an actdb.Store or an Explorer."""
    ex = explorer(store)
    if token_id is not None:
        ids, what = ([token_id] if 0 <= token_id < len(ex.vocab()) else []), f"token id {token_id}"
    else:
        ids, what = find_tokens(ex, text or ""), f"token {text!r}"
    if not ids:
        raise NotFound(f"{what}: not in the vocabulary of store {ex.name}")
    counts = ex.token_counts()
    matches = sorted((TokenMatch(i, ex.token_text(i), counts.get(i, 0)) for i in ids),
                     key=lambda m: (-m.count, m.token_id))
    r = ex.side_by_side({"detectors": lambda: ex.q(_DETECTORS, ids=ids).to_dicts(),
                         "top": lambda: ex.q(_TOP, ids=ids, k=limit).to_dicts()})
    return TokenFacts(tuple(matches),
                      tuple(DetectingNeuron(d["layer"], d["neuron"], tuple(d["tokens"]), d["share"], d["token_id"],
                                            d["fires"], _p(ex, d["fires"], d["token_id"])) for d in r["detectors"]),
                      tuple(FiringNeuron(**f, p_fire=_p(ex, f["fires"], f["token_id"])) for f in r["top"]))


def _p(ex: Explorer, fires: int | None, token_id: int | None) -> float | None:
    """P(fires | token) over the rows the index counts."""
    return None if fires is None else fires / ex.token_counts()[token_id]
