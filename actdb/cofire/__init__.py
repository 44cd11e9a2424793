"""Co-firing: which neurons fire together (docs/definitions.md, "Co-firing"). A stage of its own,
between the store and its users: the index stores every neuron's top neighbours with it
(`actdb index --neighbours K`), the query handle and SQL ask one neuron against all
(`Store.neighbours`, `neighbours(...)`), and `actdb match` compares two stores."""
from .counts import (MEASURES, SCOPES, Match, Neighbour, Pair, TokenSubset, as_rows, build_neighbours,  # noqa: F401
                     check_same_rows, match_stores, measures, neighbours)
