"""What a neuron fires together with: its top neighbours by phi within its own layer and over
every recorded layer, each with n_both, phi, Jaccard and P(other | this) (docs/definitions.md,
"Co-firing"). Read from the index's neuron_neighbours when the index has it (`actdb index
--neighbours K`), else counted from the masks (`Store.neighbours`: exact, and quick once the
handle's cache holds the masks' words; not where the masks outgrow that cache, since each page
would then read them all again); the facts say which."""
from __future__ import annotations

from dataclasses import dataclass

from ..cofire import Neighbour
from ..cofire.counts import CACHE_MB
from .explorer import explorer

FIRES_WITH = 10   # neighbours shown in each list
INDEX, LIVE, OFF = "index", "live", "off"


@dataclass(frozen=True)
class FiresWith:
    k: int                          # at most this many in each list
    source: str                     # INDEX: the index's neuron_neighbours; LIVE: counted from the masks; OFF: neither
    said: str                       # the source in words, as the card and the page say it
    layer: tuple[Neighbour, ...]    # within the neuron's own layer, rank 1 first
    all: tuple[Neighbour, ...]      # over every recorded layer


SAID = {INDEX: "from the index's co-firing table (actdb index --neighbours K)",
        LIVE: "counted from the masks (the index has no co-firing table)",
        OFF: (f"not counted: this store's masks are larger than the {CACHE_MB} MiB kept for counting, so each "
              "page would read them all again; build the index's co-firing table (actdb index --neighbours 20)")}
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
    m = ex.manifest
    if len(m.layers) * m.d_ffn * -(-m.n_tokens // 64) * 8 > CACHE_MB << 20:
        return FiresWith(k, OFF, SAID[OFF], (), ())
    return FiresWith(k, LIVE, SAID[LIVE], tuple(st.neighbours(layer, neuron, k, layers=[layer])),
                     tuple(st.neighbours(layer, neuron, k)))
