"""Each neuron of one store and its best co-firing match in another over the same token rows
(`actdb match`): the handles opened, the matches counted, the table written."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..cofire import Match, as_rows, match_stores
from ..devices import device_name, resolve_workers
from ..store.layout import check_outside_stores
from .handle import open as open_store


def match_to_csv(store_a: str | Path, store_b: str | Path, out: str | Path, rule_a: str | None = None,
                 rule_b: str | None = None, same_layer: bool = False, device: str = "cpu",
                 memory_mb: float = 512.0) -> int:
    """Write each alive neuron of store_a (rule_a) and its best match by phi in store_b (rule_b)
    as CSV to `out`, a file outside every store; the number of neurons matched."""
    import polars as pl

    check_outside_stores(out)
    found = match_stores(open_store(store_a, rule=rule_a), open_store(store_b, rule=rule_b), same_layer,
                         device=device_name(device), memory_mb=memory_mb, workers=resolve_workers(0))
    schema = {f.name: (pl.Float64 if f.name in ("jaccard", "p_other_given", "phi") else pl.Int64)
              for f in dataclasses.fields(Match)}
    pl.DataFrame(as_rows(found), schema=schema).write_csv(out)
    return len(found)
