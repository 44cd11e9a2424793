"""Vocabulary projection of neurons (Voita et al. §4.4, SPEC §1.5).

A neuron's update to the residual stream is its row of the FFN output matrix, saved at
ingest in projection.safetensors (w_out.L [d_ffn, d_model], w_u [vocab, d_model]).
score(t) = w_out[n] · w_u[t]; vocabulary rows the tokenizer does not have (padding) are
masked. The index keeps the top and bottom K_MAX tokens of every neuron; any other
(neuron, token) score comes from the `proj_score` SQL function, computed on demand.
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import StoreError

K_MAX = 50
FILE = "projection.safetensors"


class Projection:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        if not (self.root / FILE).exists():
            raise StoreError(f"{self.root / FILE}: missing (the store predates vocabulary projection)")
        self._w_out: dict[int, np.ndarray] = {}

    @cached_property
    def _tensors(self):
        from safetensors import safe_open

        return safe_open(str(self.root / FILE), framework="pt", device="cpu")

    def w_out(self, layer: int) -> np.ndarray:
        """float32 [d_ffn, d_model], read once per layer."""
        if layer not in self._w_out:
            key = f"w_out.{layer}"
            if key not in self._tensors.keys():
                raise StoreError(f"layer {layer}: no FFN output rows in {self.root / FILE}")
            self._w_out[layer] = self._w(key)
        return self._w_out[layer]

    @cached_property
    def w_u(self) -> np.ndarray:
        """float32 [vocab, d_model]."""
        return self._w("w_u")

    def _w(self, key: str) -> np.ndarray:
        return self._tensors.get_tensor(key).float().numpy()

    @cached_property
    def valid(self) -> np.ndarray:
        """bool [vocab]: rows of the unembedding that are real tokens (not padding)."""
        ids = pq.read_table(self.root / "vocab.parquet", columns=["token_id"])["token_id"].to_numpy()
        ok = np.zeros(self.w_u.shape[0], dtype=bool)
        ok[ids[ids < len(ok)]] = True
        return ok

    def scores(self, layer: np.ndarray, neuron: np.ndarray, token_id: np.ndarray) -> np.ndarray:
        """score for each (layer, neuron, token) triple; NaN for padding rows or bad ids."""
        out = np.full(len(layer), np.nan)
        for l in np.unique(layer):
            sel = layer == l
            w = self.w_out(int(l))
            n, t = neuron[sel], token_id[sel]
            ok = (n >= 0) & (n < len(w)) & (t >= 0) & (t < len(self.valid))
            ok[ok] &= self.valid[t[ok]]
            vals = np.full(len(n), np.nan)
            vals[ok] = np.einsum("ij,ij->i", w[n[ok]].astype(np.float64), self.w_u[t[ok]].astype(np.float64))
            out[sel] = vals
        return out


def build_projection_index(root: Path, layers, k_max: int = K_MAX, chunk: int = 256, progress: bool = False) -> None:
    """index/vocab_projection.parquet: layer, neuron, token_id, score, rank (1..k top, -1..-k bottom)."""
    from tqdm import tqdm

    proj = Projection(root)
    w_u = proj.w_u[proj.valid]                                   # [real vocab, d_model]
    ids = np.flatnonzero(proj.valid).astype(np.int32)
    k = min(k_max, len(ids))
    tables = []
    for layer in tqdm(layers, desc="projection", unit="layer", disable=not progress, dynamic_ncols=True):
        w = proj.w_out(layer)
        for lo in range(0, len(w), chunk):
            s = w[lo:lo + chunk] @ w_u.T                         # [chunk, real vocab]
            V = s.shape[1]
            # two single-kth selections: numpy's multi-kth argpartition is ~3x slower than both together
            top = np.argpartition(s, V - k, axis=1)[:, V - k:]
            bot = np.argpartition(s, k - 1, axis=1)[:, :k]
            rows = np.arange(len(s))[:, None]
            top = np.take_along_axis(top, np.argsort(-s[rows, top], axis=1, kind="stable"), 1)
            bot = np.take_along_axis(bot, np.argsort(s[rows, bot], axis=1, kind="stable"), 1)
            for sel, sign in ((top, 1), (bot, -1)):
                n = len(s)
                tables.append(pa.table({
                    "layer": np.full(n * k, layer, dtype=np.int32),
                    "neuron": np.repeat(np.arange(lo, lo + n, dtype=np.int32), k),
                    "token_id": ids[sel].ravel(),
                    "score": s[rows, sel].ravel().astype(np.float32),
                    "rank": np.tile(np.arange(1, k + 1, dtype=np.int32) * sign, n)}))
    out = root / "index" / "vocab_projection.parquet"
    tmp = out.with_name(".vocab_projection.parquet.tmp")
    pq.write_table(pa.concat_tables(tables), tmp, compression="zstd")
    tmp.replace(out)


def register(con, root: Path) -> None:
    """proj_score(layer, neuron, token_id) -> DOUBLE on a DuckDB connection."""
    import duckdb

    proj = Projection(root)

    def fn(layer, neuron, token_id):
        return pa.array(proj.scores(layer.to_numpy(zero_copy_only=False), neuron.to_numpy(zero_copy_only=False),
                                    token_id.to_numpy(zero_copy_only=False)), pa.float64())

    t = duckdb.sqltypes  # duckdb.typing before 2.0
    con.create_function("proj_score", fn, [t.INTEGER, t.INTEGER, t.INTEGER], t.DOUBLE, type="arrow",
                        null_handling="special")


def views(root: Path) -> list[str]:
    path = str(root / "index" / "vocab_projection.parquet").replace("'", "''")
    return [
        f"CREATE VIEW vocab_projection_all AS SELECT * FROM read_parquet('{path}')",
        """CREATE MACRO vocab_projection_at(k := 10) AS TABLE
           SELECT p.layer, p.neuron, p.token_id, v.token, p.score, p.rank,
                  CASE WHEN p.rank > 0 THEN 'promoted' ELSE 'suppressed' END AS direction
           FROM vocab_projection_all p LEFT JOIN vocab v USING (token_id) WHERE abs(p.rank) <= k""",
        "CREATE VIEW vocab_projection AS SELECT * FROM vocab_projection_at()",
        """CREATE MACRO detector_suppression_at(max_cov := 5, p_cov := 0.95, p_token := 0.95, p_share := 0.95) AS TABLE
           WITH d AS (SELECT layer, neuron, tokens, unnest(token_ids) AS token_id
                      FROM token_detectors_at(max_cov := max_cov, p_cov := p_cov, p_token := p_token, p_share := p_share))
           SELECT layer, neuron, any_value(tokens) AS tokens, count(*) AS n_covered,
                  avg(proj_score(layer, neuron, token_id)) AS mean_score,
                  avg(proj_score(layer, neuron, token_id)) < 0 AS suppresses
           FROM d GROUP BY layer, neuron""",
        "CREATE VIEW detector_suppression AS SELECT * FROM detector_suppression_at()",
    ]
