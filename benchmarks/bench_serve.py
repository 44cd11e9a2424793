"""`actdb serve` page times (target: every page and API route <= 300 ms server time, warm).

    .venv/bin/python benchmarks/bench_serve.py --work /tmp/bserve            # builds the stores once
    .venv/bin/python benchmarks/bench_serve.py --work /tmp/bserve --reuse    # times again
    .venv/bin/python benchmarks/bench_serve.py --store STORE [--store STORE]  # times existing stores

Two synthetic stores from bench_queries.make_store (sparse neurons, token detectors,
positional neurons; Zipf token ids), each with random projection weights so the vocabulary
projection is on the neuron pages:
- SmolLM2-shaped: 30 layers x 1536 neurons, seq_len 256, 49,152-token vocabulary, and the
  demo's 49,152 tokens (--smol-tokens);
- OPT-125m-shaped: 12 x 3072, seq_len 512, 50,272-token vocabulary, --opt-tokens tokens.
Server time is the app's own Server-Timing header (request in to response start; every page
is rendered whole before it starts), through Starlette's TestClient in this process. Warm:
each URL once untimed (token arrays, figures and DuckDB's caches loaded), then the median and
the worst of --repeat runs.
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import stamp, table  # noqa: E402
from bench_queries import OPT125M, SMOLLM2, Shape, make_store  # noqa: E402


def plant_projection(root: Path, shape: Shape, d_model: int = 64, seed: int = 0) -> None:
    """Random unembedding and FFN output rows (projection.safetensors), as an ingest saves them."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    t = {"w_u": torch.randn(shape.vocab, d_model, generator=g)}
    for l in range(shape.layers):
        t[f"w_out.{l}"] = torch.randn(shape.d_ffn, d_model, generator=g)
    save_file(t, str(root / "projection.safetensors"))


def build(root: Path, shape: Shape, n_tokens: int) -> dict:
    from actdb.index.build import build_index

    t0 = time.perf_counter()
    make_store(root, n_tokens, shape=shape)
    plant_projection(root, shape)
    t1 = time.perf_counter()
    build_index(root, progress=False)
    return {"make_s": round(t1 - t0, 1), "index_s": round(time.perf_counter() - t1, 1)}


def urls(st, name: str) -> list[tuple[str, str]]:
    """(page kind, URL) of every page type, HTML and JSON."""
    m = st.manifest
    mid = m.layers[len(m.layers) // 2]
    det = st.sql("SELECT layer, neuron FROM token_detectors ORDER BY layer, neuron LIMIT 1")
    # a store with no detector (SmolLM2 under the sign rule): the neuron fewest tokens cover
    det = det.row(0) if det.height else st.sql(
        "SELECT layer, neuron FROM coverage WHERE n = 1 AND n_covering > 0 ORDER BY n_covering, layer, neuron "
        "LIMIT 1").row(0)
    busy = st.sql("SELECT layer, neuron FROM neurons WHERE layer = $l ORDER BY fires DESC LIMIT 1", {"l": mid}).row(0)
    tok = st.sql("SELECT v.token FROM token_counts JOIN vocab v USING (token_id) ORDER BY count DESC LIMIT 1 "
                 "OFFSET 5").item()
    s = f"/s/{name}"
    pages = [
        ("stores", "/"), ("store", s),
        ("layer", f"{s}/layer/{mid}"),
        ("layer sorted+filtered", f"{s}/layer/{mid}?sort=freq&desc=1&detector=none&min_freq=0.001&page=3"),
        ("layer sorted by coverage", f"{s}/layer/0?sort=cov1"),
        ("neuron (detector)", f"{s}/neuron/{det[0]}/{det[1]}"),
        ("neuron (busiest)", f"{s}/neuron/{busy[0]}/{busy[1]}"),
        ("neuron contexts page 3", f"{s}/neuron/{busy[0]}/{busy[1]}?page=3"),
        ("token", f"{s}/token?q={tok}"),
        ("document", f"{s}/doc/7?layer={busy[0]}&neuron={busy[1]}"),
        ("SQL console (saved query)", f"{s}/sql?saved=dead_per_layer"),
        ("SQL console (ad hoc)", f"{s}/sql?q=SELECT+layer,+avg(freq)+FROM+neurons+GROUP+BY+layer"),
    ]
    out = []
    for kind, u in pages:
        out.append((kind, u))
        out.append((kind + " JSON", "/api" + (u if u != "/" else "/stores")))
    out += [("SQL CSV", f"/api{s}/sql.csv?saved=dead_per_layer"), ("figure PNG (drawn once)", f"{s}/figure/fig1a.png")]
    return out


def time_pages(st, repeat: int) -> list[list]:
    from starlette.testclient import TestClient

    from actdb.serve.app import create_app, store_names
    from actdb.settings import ServeSettings

    (name,) = store_names([st])
    rows = []
    with TestClient(create_app([st], ServeSettings()), base_url="http://127.0.0.1") as c:
        for kind, u in urls(st, name):
            r = c.get(u)
            assert r.status_code == 200, (u, r.status_code, r.text[:300])
            first = float(re.search(r"dur=([\d.]+)", r.headers["server-timing"]).group(1))
            ms = []
            for _ in range(repeat):
                r = c.get(u)
                ms.append(float(re.search(r"dur=([\d.]+)", r.headers["server-timing"]).group(1)))
            rows.append([kind, u, f"{first:.0f}", f"{statistics.median(ms):.0f}", f"{max(ms):.0f}"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/bserve")
    ap.add_argument("--smol-tokens", type=int, default=49152)
    ap.add_argument("--opt-tokens", type=int, default=131072)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--reuse", action="store_true", help="reuse stores built by an earlier run")
    ap.add_argument("--store", action="append", default=[],
                    help="time this existing store instead of building the synthetic ones (repeatable)")
    args = ap.parse_args()
    import actdb

    print(f"# bench_serve {stamp()}")
    synthetic = [] if args.store else [(shape, n, Path(args.work) / f"{shape.name}-{n}")
                                       for shape, n in ((SMOLLM2, args.smol_tokens), (OPT125M, args.opt_tokens))]
    for shape, n, root in synthetic:
        if not (args.reuse and (root / "index" / "index.json").exists()):
            import shutil

            shutil.rmtree(root, ignore_errors=True)
            print(f"{shape.name}: built in", build(root, shape, n), flush=True)
    for root in [Path(p) for p in args.store] or [r for _, _, r in synthetic]:
        st = actdb.open(root)
        m = st.manifest
        if args.store and len(st.rules) > 1:
            print(f"(rule {st.rule}; the store has {', '.join(st.rules)})")
        print(f"\n## {m.model}: {len(m.layers)} x {m.d_ffn} neurons, {m.n_tokens:,} tokens, vocabulary {m.vocab_size:,}\n")
        rows = time_pages(st, args.repeat)
        print(table(["page", "URL", "first ms", "warm median ms", "warm max ms"], rows), flush=True)
        worst = max(rows, key=lambda r: float(r[4]))
        print(f"\nworst warm: {worst[0]} {worst[4]} ms")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
