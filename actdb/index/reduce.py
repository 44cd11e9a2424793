"""Step 2 of the index, continued: a unit's exact counts reduced to the rows every table keeps."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..store.layout import INDEX_TABLES
from .stats import detectors, positional_mi, segment_stats, switches
from .tokens import TokenArrays

NGRAMS = (("token", "token_id", 1), ("bigram", "ngram", 2), ("trigram", "ngram", 3))


def unit_tables(layer: int, n0: int, c: np.ndarray, tok: TokenArrays, ngram: bool, config,
                 vocab: np.ndarray) -> dict[str, pa.Table]:
    """Exact counts of one unit -> the rows of every per-neuron table, at the thresholds and
    top_k of `config` (store.index_info.IndexConfig, the record the index is written with)."""
    top_k = config.top_k
    ch = c.shape[0]
    T, nd = tok.T, len(tok.domains)
    neurons = np.arange(n0, n0 + ch, dtype=np.int32)

    def lay(k: int) -> np.ndarray:
        return np.full(k, layer, np.int16)

    dom = c[:, :nd]
    out = {"neuron_fires": pa.table({"layer": lay(ch), "neuron": neurons, "fires": dom.sum(axis=1, dtype=np.int64)})}
    a, b = np.nonzero(dom)
    out["neuron_domains"] = pa.table({"layer": lay(len(a)), "neuron": neurons[a],
                                      "domain": pa.array(np.asarray(tok.domains, dtype=object)[b].tolist(), pa.string()),
                                      "fires": dom[a, b].astype(np.int64)})
    o = tok.offsets
    pos, posf = c[:, o["pos"]:o["pos"] + T], c[:, o["pos_full"]:o["pos_full"] + T]
    a, b = np.nonzero(pos)
    out["neuron_positions"] = pa.table({"layer": lay(len(a)), "neuron": neurons[a], "pos": b.astype(np.int32),
                                        "fires": pos[a, b].astype(np.int64),
                                        "fires_full": posf[a, b].astype(np.int64)})
    if tok.pos_full_n.sum() == 0:
        mi, frp = np.full(ch, np.nan), np.zeros((ch, T))
    else:
        mi, frp = positional_mi(posf, tok.pos_full_n)
    out["positional"] = pa.table({"layer": lay(ch), "neuron": neurons, "mi": pa.array(mi, mask=np.isnan(mi)),
                                  "fr_min": frp.min(axis=1), "fr_max": frp.max(axis=1),
                                  "switches_exact": switches(frp, 0.0), "switches_weak": switches(frp, config.weak_eps)})
    cov = []
    for name, col, n in NGRAMS if ngram else NGRAMS[:1]:
        seg = c[:, o[name]:o[name] + len(tok.uniq[name])]
        s = segment_stats(seg, top_k, config.p_cov)
        ids = tok.uniq[name][s.top_col]
        out[f"neuron_{name}s"] = pa.table({
            "layer": lay(len(ids)), "neuron": neurons[s.top_row],
            col: ids.astype(np.int32 if n == 1 else np.int64), "fires": s.top_val, "rank": s.top_rank,
            "cum": s.top_cum, "total": s.total[s.top_row]})
        alive = np.flatnonzero(s.total > 0)
        cov.append((alive, n, s))
        if n in (1, 3):
            det = detectors(seg, s, tok.counts[name], config.tok_max_cov if n == 1 else config.tri_max_cov,
                            config.p_token, config.p_share)
            rows = [i for i, _, _ in det]
            lists = [tok.uniq[name][cols] for _, cols, _ in det]
            t = {"layer": pa.array(np.full(len(det), layer, np.int32)), "neuron": pa.array(neurons[rows]),
                 "n_covering": pa.array(s.n_covering[rows], pa.int64())}
            if n == 1:
                t["token_ids"] = pa.array([x.astype(np.int32) for x in lists], pa.list_(pa.int32()))
                t["tokens"] = pa.array([[vocab[x] if 0 <= x < len(vocab) else None for x in ids_]
                                        for ids_ in lists], pa.list_(pa.string()))
            else:
                t["ngrams"] = pa.array([x.astype(np.int64) for x in lists], pa.list_(pa.int64()))
            t["share"] = pa.array([sh for _, _, sh in det], pa.float64())
            out["token_detectors" if n == 1 else "trigram_detectors"] = pa.table(t)
    # coverage rows ordered by neuron, then n
    nn = np.concatenate([a for a, _, _ in cov])
    order = np.lexsort((np.concatenate([np.full(len(a), n) for a, n, _ in cov]), nn))
    out["coverage"] = pa.table({
        "layer": pa.array(np.full(len(nn), layer, np.int32)),
        "neuron": pa.array(neurons[nn][order]),
        "n": pa.array(np.concatenate([np.full(len(a), n, np.int32) for a, n, _ in cov])[order]),
        "n_covering": pa.array(np.concatenate([s.n_covering[a] for a, _, s in cov])[order]),
        "n_distinct": pa.array(np.concatenate([s.n_distinct[a] for a, _, s in cov])[order]),
        "fires": pa.array(np.concatenate([s.total[a] for a, _, s in cov])[order])})
    return out


TABLES = INDEX_TABLES
EMPTY_SCHEMAS = {
    "neuron_bigrams": pa.schema([("layer", pa.int16()), ("neuron", pa.int32()), ("ngram", pa.int64()),
                                 ("fires", pa.int64()), ("rank", pa.int64()), ("cum", pa.int64()),
                                 ("total", pa.int64())]),
    "token_detectors": pa.schema([("layer", pa.int32()), ("neuron", pa.int32()), ("n_covering", pa.int64()),
                                  ("token_ids", pa.list_(pa.int32())), ("tokens", pa.list_(pa.string())),
                                  ("share", pa.float64())]),
    "trigram_detectors": pa.schema([("layer", pa.int32()), ("neuron", pa.int32()), ("n_covering", pa.int64()),
                                    ("ngrams", pa.list_(pa.int64())), ("share", pa.float64())]),
}
EMPTY_SCHEMAS["neuron_trigrams"] = EMPTY_SCHEMAS["neuron_bigrams"]
