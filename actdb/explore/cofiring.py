"""What a neuron fires together with: its top neighbours by phi within its own layer and over
every recorded layer, each with n_both, phi, Jaccard and P(other | this) (docs/definitions.md,
"Co-firing"). Read from the index's neuron_neighbours when the index has it (`actdb index
--neighbours K`), else counted from the masks (`Store.neighbours`: exact, and quick once the
handle's cache holds the masks' words); the facts say which."""
from __future__ import annotations

from dataclasses import dataclass

from ..cofire import Neighbour
from .explorer import explorer

FIRES_WITH = 10   # neighbours shown in each list
INDEX, LIVE = "index", "live"


@dataclass(frozen=True)
class FiresWith:
    k: int                          # at most this many in each list
    source: str                     # INDEX: the index's neuron_neighbours; LIVE: counted from the masks now
    said: str                       # the source in words, as the card and the page say it
    layer: tuple[Neighbour, ...]    # within the neuron's own layer, rank 1 first
    all: tuple[Neighbour, ...]      # over every recorded layer


SAID = {INDEX: "from the index's co-firing table (actdb index --neighbours K)",
        LIVE: "counted from the masks (the index has no co-firing table)"}
NO_NEIGHBOURS = "none (no phi: it fires on no row or on every row)"


def fires_with(store, layer: int, neuron: int, k: int = FIRES_WITH) -> FiresWith:
    """Neuron (layer, neuron)'s top `k` neighbours by phi, in its layer and over all layers.
    `store`: an actdb.Store or an Explorer (its fire rule). Exact either way: the index keeps
    every alive neuron's top K of both lists; a dead neuron has none (its phi is NULL)."""
    ex = explorer(store)
    ex.check_neuron(layer, neuron)
    st = ex.st()
    mine = st.indexed_neighbours(layer, neuron, "layer")
    if mine is not None:
        every = st.indexed_neighbours(layer, neuron, "all")
        return FiresWith(k, INDEX, SAID[INDEX], tuple(mine[:k]), tuple(every[:k]))
    return FiresWith(k, LIVE, SAID[LIVE], tuple(st.neighbours(layer, neuron, k, layers=[layer])),
                     tuple(st.neighbours(layer, neuron, k)))
