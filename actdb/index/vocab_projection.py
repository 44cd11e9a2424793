"""The vocabulary projection table of the index (Voita et al. §4.4; docs/definitions.md): the top and
bottom K_MAX tokens of every neuron; any other (neuron, token) score comes from the
`proj_score` SQL function (actdb.query), computed on demand."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..files import write_parquet
from ..store.layout import INDEX_DIR, INDEX_PROJECTION_FILE
from ..store.projection_weights import Projection
from .count import compiled

K_MAX = 50


def build_projection_index(store, layers, k_max: int = K_MAX, chunk: int = 256, progress: bool = False,
                           out: Path | None = None, stop: threading.Event | None = None) -> None:
    """index/vocab_projection.parquet (in `out`, default STORE/index/): layer, neuron, token_id,
    score, rank (1..k top, -1..-k bottom). stop: when set (the build beside it failed), returns
    at the next layer without writing the file."""
    from tqdm import tqdm

    jit = compiled()
    proj = Projection(store)
    w_u = proj.w_u[proj.valid]                                   # [real vocab, d_model]
    ids = np.flatnonzero(proj.valid).astype(np.int32)
    k = min(k_max, len(ids))
    tables = []
    for layer in tqdm(layers, desc="projection", unit="layer", disable=not progress, dynamic_ncols=True):
        if stop is not None and stop.is_set():
            return
        w = proj.w_out(layer)
        for lo in range(0, len(w), chunk):
            s = w[lo:lo + chunk] @ w_u.T                         # [chunk, real vocab]
            top, bot = _top_bottom(s, k, jit)                    # [chunk, k] column ids each
            rows = np.arange(len(s))[:, None]
            for sel, sign in ((top, 1), (bot, -1)):
                n = len(s)
                tables.append(pa.table({
                    "layer": np.full(n * k, layer, dtype=np.int32),
                    "neuron": np.repeat(np.arange(lo, lo + n, dtype=np.int32), k),
                    "token_id": ids[sel].ravel(),
                    "score": s[rows, sel].ravel().astype(np.float32),
                    "rank": np.tile(np.arange(1, k + 1, dtype=np.int32) * sign, n)}))
    write_parquet(pa.concat_tables(tables), Path(out if out is not None else store.path / INDEX_DIR) / INDEX_PROJECTION_FILE)


def _top_bottom(s: np.ndarray, k: int, jit) -> tuple[np.ndarray, np.ndarray]:
    """The columns of each row's k largest scores (descending) and k smallest (ascending), of
    equal scores the lower token id first. The compiled kernel where it loads (one pass, one
    core, 1.5x faster than two torch.topk calls, whose spinning thread pool also slowed the
    matmul: benchmarks/RESULTS.md, "Index kernels"); torch for rows with a NaN and without
    the kernels (its order among equal scores is unspecified)."""
    if jit is not None and k > 0 and not np.isnan(s).any():
        top, bot = np.empty((len(s), k), np.int64), np.empty((len(s), k), np.int64)
        jit.top_bottom_k(np.ascontiguousarray(s), top, bot)
        return top, bot
    import torch

    # torch.topk selects and sorts the k in one pass: 4x faster than argpartition + argsort here
    st = torch.from_numpy(s)
    return st.topk(k, dim=1).indices.numpy(), st.topk(k, dim=1, largest=False).indices.numpy()
