"""A layer's positional neurons as a team (Voita et al. 2023, §5: positional neurons work in
teams, jointly covering the positions, none redundant): each neuron's firing frequency by
position fr(pos) on full-length sequences and its *range*, the positions where fr(pos) is above
its mean over the positions (the saved query positional_team); the neurons ordered by their
ranges, so that the picture shows how the ranges divide the positions; a greedy cover (how few
of them cover what the team covers); and how much each pair fires together over every token row
(exact co-firing counts among the layer's positional neurons: n_both, Jaccard, phi). `actdb plot STORE
positional_team -p layer L` draws it; the explorer's team page shows it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cofire import counts_among, measures
from ..errors import InputError
from .explorer import explorer
from .thresholds import thresholds

QUERY = "positional_team"


@dataclass(frozen=True)
class TeamNeuron:
    neuron: int
    mi: float
    pattern: str
    strong: bool
    mean: float                             # its mean fr(pos) over the positions
    ranges: tuple[tuple[int, int], ...]     # maximal runs of positions above its mean (first, last)
    n_positions: int                        # positions in its ranges
    partner: int | None                     # the other team member it overlaps most (largest Jaccard)
    partner_jaccard: float | None


@dataclass(frozen=True)
class PositionalTeam:
    layer: int | None                       # None: no positional neurons in the store at these thresholds
    n_positions: int                        # T: positions of a full-length sequence
    neurons: tuple[TeamNeuron, ...]         # in team order (team_order)
    profile: tuple[tuple[float, ...], ...]  # fr(pos) of each neuron, in team order
    coverage: tuple[int, ...]               # per position: how many ranges hold it
    covered: int                            # positions some range holds
    cover: tuple[int, ...]                  # a greedy cover of those positions (greedy_cover), neuron ids
    n_tokens: int                           # the rows co-firing is counted over (all of the store's)
    n_both: tuple[tuple[int, ...], ...]     # [i][j], in team order; the diagonal: neuron i's fires
    jaccard: tuple[tuple[float | None, ...], ...]
    phi: tuple[tuple[float | None, ...], ...]
    thresholds: dict[str, Any]              # the index's, which the positional views are at


def positional_team(store, layer: int | None = None, params: dict[str, Any] | None = None) -> PositionalTeam:
    """Layer `layer`'s positional neurons as a team (None: the layer with the most of them), at the
    index's thresholds unless `params` (mi_min, min_switches, rule) says otherwise. `store`: an
    actdb.Store or an Explorer."""
    ex = explorer(store)
    params = {k: v for k, v in (params or {}).items() if k != "layer"}
    if layer is not None:
        ex.check_layer(layer)
    st = ex.st().with_rule(params.pop("rule", None))
    rows = st.query(QUERY, {**params, "layer": -1 if layer is None else int(layer)}, timeout=ex.timeout)
    return team_of(st, rows, layer)


def team_of(store, rows, layer: int | None = None) -> PositionalTeam:
    """The team from the saved query's answer (a Polars frame: layer, neuron, mi, pattern, strong,
    pos, freq, above; by neuron, then position), with the co-firing counts among its neurons.
    layer: the layer asked for (None or -1: the query's choice)."""
    if layer is not None and layer >= 0 and layer not in store.manifest.layers:
        raise InputError(f"layer: expected one of the recorded layers {list(store.manifest.layers)}, got {layer}")
    layer = None if layer is None or layer < 0 else int(layer)
    T = int(rows["pos"].n_unique()) if rows.height else 0
    k = rows.height // T if T else 0
    neurons = rows["neuron"].to_numpy()[::T] if k else np.zeros(0, np.int64)
    if rows.height:
        layer = int(rows["layer"][0])
    freq = rows["freq"].to_numpy().reshape(k, T) if k else np.zeros((0, 0))
    above = rows["above"].to_numpy().reshape(k, T) if k else np.zeros((0, 0), bool)
    if k and layer is not None:
        n, _, both = counts_among(store, layer, neurons.tolist())
    else:
        n, both = store.manifest.n_tokens, np.zeros((0, 0), np.int64)
    fires = np.diag(both)
    jac, _, phi = measures(n, fires[:, None], fires[None, :], both)
    order = team_order(above)
    off = jac.copy()
    np.fill_diagonal(off, np.nan)
    info = rows.gather_every(T).to_dicts() if k else []
    members = []
    for i in order:
        partner = None if k < 2 or np.isnan(off[i]).all() else int(np.nanargmax(off[i]))
        members.append(TeamNeuron(int(neurons[i]), info[i]["mi"], info[i]["pattern"], info[i]["strong"],
                                  float(freq[i].mean()), runs(above[i]), int(above[i].sum()),
                                  None if partner is None else int(neurons[partner]),
                                  None if partner is None else float(off[i, partner])))

    def matrix(x: np.ndarray, cast) -> tuple:
        return tuple(tuple(None if v != v else cast(v) for v in x[i, order]) for i in order)
    return PositionalTeam(layer, T, tuple(members), tuple(tuple(float(v) for v in freq[i]) for i in order),
                          tuple(int(c) for c in above.sum(axis=0)), int(above.any(axis=0).sum()),
                          tuple(int(neurons[i]) for i in greedy_cover(above, jac)), n,
                          matrix(both, int), matrix(jac, float), matrix(phi, float), thresholds(store))


def team_order(above: np.ndarray) -> list[int]:
    """The order of the team (above: bool [neurons, positions]): by their ranges read from
    position 0 on, as binary numbers with position 0 the highest bit, the larger first (so those
    above their mean at position 0 come first, the one that stays above longest first), then the
    lower index. Neurons whose ranges split the positions alike sit together."""
    keys = [~above[:, p] for p in range(above.shape[1] - 1, -1, -1)]   # np.lexsort: the last key first
    return np.lexsort([np.arange(above.shape[0])] + keys).tolist() if above.size else []


def greedy_cover(above: np.ndarray, jaccard: np.ndarray) -> list[int]:
    """Neurons whose ranges together hold every position some range holds, picked greedily: the
    one adding the most positions not yet held; of equals, the one overlapping those picked least
    (its largest Jaccard with them), then the lower index."""
    k = above.shape[0]
    left, held, picked = set(range(k)), np.zeros(above.shape[1], bool), []
    target = above.any(axis=0) if k else held
    most = np.full(k, -np.inf)   # each one's largest Jaccard with the picked ones (NULL pairs ignored)
    while (held != target).any():
        best = min(left, key=lambda i: (-int((above[i] & ~held).sum()), most[i], i))
        picked.append(best)
        left.discard(best)
        held |= above[best]
        most = np.fmax(most, jaccard[:, best])
    return picked


def runs(on: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Maximal runs of True as (first, last) positions."""
    d = np.diff(np.r_[0, on.astype(np.int8), 0])
    return tuple((int(a), int(b) - 1) for a, b in zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)))
