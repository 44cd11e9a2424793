"""Planting vocabulary-projection weights and magnitude capture into the hand-built store,
and numpy references for the saved queries of vocabulary projection and massive activations."""
from __future__ import annotations

import numpy as np
import torch
import zarr
from safetensors.torch import load_file, save_file

from actdb.ingest.capture import CaptureWriter
from actdb.store.manifest import Manifest
from records import record_files

MASSIVE_DIM, DECOY_DIM, K = 3, 9, 2
NAMES = ("detector_projection_examples", "detector_suppression_share", "massive_top_magnitudes",
         "massive_sites", "massive_by_layer")


def plant(root, pos: np.ndarray, d_model: int = 6, seed: int = 0) -> None:
    """Random projection weights; residual capture with a massive activation (5000 in dim 3)
    on the first position from the second recorded layer on, and a decoy (150 in dim 9,
    above 100 but under 1000 x the median) on position 1."""
    m = Manifest.read(root)
    g = torch.Generator().manual_seed(seed)
    V = m.vocab_size + 3                                    # 3 padding rows that must never show up
    tensors = {"w_u": torch.randn(V, d_model, generator=g) * 2}
    for l in m.layers:
        tensors[f"w_out.{l}"] = torch.randn(m.d_ffn, d_model, generator=g)
    save_file(tensors, str(root / "projection.safetensors"))
    rng = np.random.default_rng(seed)
    L, n = len(m.layers), m.n_tokens
    vals = rng.normal(0, 1, size=(L, n, K)).astype(np.float32)
    dims = np.stack([rng.choice(d_model * 4, size=K, replace=False) for _ in range(L * n)]).reshape(L, n, K)
    dims[dims == MASSIVE_DIM] = 0
    seq_med = np.full((L, n), 0.3, dtype=np.float32)
    for i in range(1, L):
        vals[i, pos == 0, 0], dims[i, pos == 0, 0] = 5000.0 + i, MASSIVE_DIM
    vals[:, pos == 1, 0], dims[:, pos == 1, 0] = -150.0, DECOY_DIM
    order = np.argsort(-np.abs(vals), axis=2, kind="stable")
    vals, dims = np.take_along_axis(vals, order, 2), np.take_along_axis(dims, order, 2)
    w = CaptureWriter(root, ("resid",), L, n, K, m.block_tokens, create=True)
    for b, lo in enumerate(range(0, n, m.block_tokens)):
        hi = min(n, lo + m.block_tokens)
        w.write_block(b, {"resid_topk_value": vals[:, lo:hi], "resid_topk_dim": dims[:, lo:hi].astype(np.int32),
                          "resid_median": np.abs(vals[:, lo:hi]).mean(2).astype(np.float32),
                          "resid_seq_median": seq_med[:, lo:hi]})
    record_files(root, [root / "projection.safetensors", *(f for f in (root / "capture").rglob("*") if f.is_file())],
                 capture=("resid",), capture_topk=K)


def _capture(st, kind="resid"):
    cap = zarr.open_group(st.path / "capture", mode="r")
    return {f: cap[f"{kind}_{f}"][:] for f in ("topk_value", "topk_dim", "median", "seq_median")}


def _massive(st, abs_min=100.0, ratio=1000.0):
    c = _capture(st)
    toks = st.tokens().sort("row")
    text = dict(zip(st.vocab()["token_id"].to_list(), st.vocab()["token"].to_list()))
    out = []
    for i, layer in enumerate(st.manifest.layers):
        v, d, sm = c["topk_value"][i], c["topk_dim"][i], c["seq_median"][i]
        for r, k in zip(*np.nonzero((np.abs(v) > abs_min) & (np.abs(v) >= ratio * sm[:, None]))):
            tid = int(toks["token_id"][int(r)])
            out.append(dict(layer=layer, dim=int(d[r, k]), value=float(v[r, k]), med=float(sm[r]),
                            pos=int(toks["pos"][int(r)]), token=text.get(tid)))
    return out


def expected(name: str, ref, st) -> list[tuple]:
    if name in ("detector_projection_examples", "detector_suppression_share"):
        w = {k: v.double().numpy() for k, v in load_file(st.path / "projection.safetensors").items()}
        vocab = st.vocab()
        ids = vocab["token_id"].to_numpy()
        text = dict(zip(ids.tolist(), vocab["token"].to_list()))
        rows = []
        for l in ref.layers:
            for nn in range(ref.d):
                det = ref.detector(l, nn, 1, 5)
                if det is None:
                    continue
                cnt = {g[0] if isinstance(g, tuple) else g: c for g, c in ref.counts(l, nn, 1).items()}
                trig = sorted((g[0] if isinstance(g, tuple) else g for g in det), key=lambda t: (-cnt[t], t))
                scores = w[f"w_out.{l}"][nn] @ w["w_u"][ids].T          # real vocabulary only
                mean = float(np.mean([w[f"w_out.{l}"][nn] @ w["w_u"][t] for t in trig]))
                top = [text[int(ids[j])] for j in np.argsort(-scores, kind="stable")[:5]]
                bottom = [text[int(ids[j])] for j in np.argsort(scores, kind="stable")[:5]]
                rows.append((l, nn, [text[t] for t in trig], mean, mean < 0, top, bottom))
        if name == "detector_projection_examples":
            return rows
        out = []
        for l in sorted({r[0] for r in rows}):
            sup = [r[4] for r in rows if r[0] == l]
            out.append((l, len(sup), sum(sup), float(np.mean(sup))))
        allsup = [r[4] for r in rows]
        return out + [(None, len(allsup), sum(allsup), float(np.mean(allsup)) if allsup else None)]
    if name == "massive_top_magnitudes":
        c = _capture(st)
        out = []
        for i, l in enumerate(st.manifest.layers):
            a = np.sort(np.abs(c["topk_value"][i]).ravel())[::-1]
            out.append((l, [float(x) for x in a[:3]], float(a[0]), float(np.median(c["seq_median"][i]))))
        return out
    m = _massive(st)
    if name == "massive_by_layer":
        keys = sorted({(x["dim"], x["layer"]) for x in m})
        out = []
        for dim, layer in keys:
            g = [x for x in m if x["dim"] == dim and x["layer"] == layer]
            a = [abs(x["value"]) for x in g]
            out.append((layer, dim, len(g), float(np.mean(a)), min(a), max(a), float(np.mean([x["med"] for x in g]))))
        return out
    if name == "massive_sites":
        out = []
        for dim in {x["dim"] for x in m}:
            g = [x for x in m if x["dim"] == dim]
            cnt: dict = {}
            for x in g:
                cnt[x["token"]] = cnt.get(x["token"], 0) + 1
            top = [t for t, _ in sorted(cnt.items(), key=lambda kv: (-kv[1], kv[0]))[:5]]
            layers = [x["layer"] for x in g]
            out.append((dim, len(g), len(set(layers)), min(layers), max(layers), max(abs(x["value"]) for x in g),
                        float(np.mean([x["pos"] == 0 for x in g])),
                        float(np.mean([x["token"].strip(" \n\t") in ("", ".", ",", ";", ":") for x in g])), top))
        return sorted(out, key=lambda r: (-r[1], r[0]))
    raise AssertionError(name)
