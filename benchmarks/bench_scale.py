"""actdb at the papers' data size: real text, real models, 1M to 20M tokens, every stage measured.

For each token count it ingests a real model over real text (the demo's sources: GCIDE, Metamath
set.mm, the Python standard library and documentation, licences, dialogue; ingest/corpus_demo.py)
and records, per store:
- ingest tokens/s and ingest ÷ a bare base-model forward (timed on the store's own first
  sequences in this process, scaled to the store's tokens), wall and CPU;
- peak RSS (VmHWM) of `actdb ingest`, `actdb index`, `actdb report` and of a server process
  answering every explorer page;
- mask bytes ÷ the order-0 entropy bound and ÷ a dense fp16 cache;
- index ÷ forward;
- every saved query warm (best of --repeat, one handle) and cold (a new process);
- a whole `actdb sql` process (best and median);
- every explorer page, first and warm (server time, as bench_serve.py measures it);
- `actdb check` and `actdb report` wall time.

Results go to WORK/scale.json, one record per (model, tokens), kept across runs so sizes can be
measured in separate runs; --plot draws each measure against tokens, log-log, into
benchmarks/figures/scale.png.

    python benchmarks/bench_scale.py --model minilm --tokens 1000000,5000000,20000000
    python benchmarks/bench_scale.py --model smollm2 --tokens 1000000
    python benchmarks/bench_scale.py --plot
    python benchmarks/bench_scale.py --model minilm --tokens 1000000,5000000,20000000 --reindex   # kept stores
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "ingest"))
from _common import ACTDB, PY, ROOT, run_peak, stamp  # noqa: E402

MODELS = {"minilm": ROOT / ".cache" / "models" / "all-MiniLM-L6-v2",
          "smollm2": ROOT / ".cache" / "models" / "SmolLM2-135M-Instruct"}
SEQ_LEN, BATCH = 256, 8

SERVE = """import json, re, statistics, sys
sys.path.insert(0, sys.argv[2])
import actdb
from bench_serve import urls
from starlette.testclient import TestClient
from actdb.serve.app import create_app, store_names
from actdb.settings import ServeSettings
st = actdb.open(sys.argv[1])
(name,) = store_names([st])
out = []
with TestClient(create_app([st], ServeSettings()), base_url="http://127.0.0.1") as c:
    for kind, u in urls(st, name):
        ms = []
        for _ in range(int(sys.argv[3]) + 1):
            r = c.get(u)
            assert r.status_code == 200, (u, r.status_code, r.text[:300])
            ms.append(float(re.search(r"dur=([\\d.]+)", r.headers["server-timing"]).group(1)))
        out.append([kind, ms[0], statistics.median(ms[1:]), max(ms[1:])])
print("PAGES", json.dumps(out))
"""

COLD = """import sys, time, json
import actdb
t = time.perf_counter(); st = actdb.open(sys.argv[1]); st.query(sys.argv[2]); print(json.dumps(time.perf_counter() - t))"""


def corpus(work: Path) -> Path:
    """All the demo's text, every document once, the domains interleaved (as the demo's corpus)."""
    from corpus_demo import build_corpus

    path = work / "corpus.jsonl"
    if not path.exists():
        used, missing = build_corpus(path, ROOT / ".cache", chars_per_domain=10**12, whole=True)
        print(f"corpus: {sum(used.values()):,} characters; {used}; left out: {missing}", flush=True)
    return path


def bare_forward(model_dir: Path, store: Path, measure: int) -> tuple[float, float, int]:
    """(wall s, CPU s, tokens) of the base model's forward over the store's first sequences, as
    ingest batches them (no LM head, no hooks), under the ingest loop's malloc thresholds
    (devices.steady_malloc)."""
    import numpy as np
    import torch
    from transformers import AutoModel

    import actdb
    from actdb.devices import steady_malloc

    steady_malloc()

    toks = actdb.open(store).tokens().select("token_id").to_numpy().ravel()
    n = min(measure // SEQ_LEN, len(toks) // SEQ_LEN) * SEQ_LEN
    seqs = torch.from_numpy(toks[:n].astype(np.int64).reshape(-1, SEQ_LEN))   # [sequences, seq]
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    model = getattr(model, "base_model", model)
    with torch.inference_mode():
        model(input_ids=seqs[:BATCH], attention_mask=torch.ones_like(seqs[:BATCH]))   # warm-up, untimed
        t0, c0 = time.perf_counter(), time.process_time()
        for lo in range(0, len(seqs), BATCH):
            ids = seqs[lo:lo + BATCH]                                              # [batch, seq]
            model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    return time.perf_counter() - t0, time.process_time() - c0, n


def storage(store: Path) -> dict:
    """Mask bytes against the order-0 entropy bound and a dense fp16 cache, read a block of
    neurons at a time (a whole layer of 20M tokens is gigabytes)."""
    import numpy as np

    import actdb

    st = actdb.open(store)
    T, bound, neurons = st.n_tokens, 0.0, 0
    for layer in st.manifest.layers:
        arr = st.packed(layer)
        for a in range(0, arr.shape[0], 64):
            counts = np.bitwise_count(np.asarray(arr[a:a + 64])).sum(axis=1, dtype=np.int64)
            f = counts / T
            with np.errstate(divide="ignore", invalid="ignore"):
                h = np.nan_to_num(-(f * np.log2(f) + (1 - f) * np.log2(1 - f)))
            bound += float((T * h / 8).sum())
            neurons += len(counts)
    chunks = sum(p.stat().st_size for p in (store / "masks").rglob("*") if p.is_file() and p.name != "zarr.json")
    return dict(mask_bytes=chunks, x_entropy=chunks / max(bound, 1), x_fp16=chunks / (2 * T * neurons))


def queries(store: Path, repeat: int) -> dict:
    import actdb
    from actdb.query.catalogue import saved_queries

    st = actdb.open(store)
    out = {}
    for sq in saved_queries():
        if sq.name.startswith("across_"):
            continue
        try:
            t0 = time.perf_counter()
            st.query(sq.name)
            first = time.perf_counter() - t0
        except Exception as e:   # a query this store cannot answer (no projection weights, ...)
            out[sq.name] = {"error": str(e)[:120]}
            continue
        ts = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            st.query(sq.name)
            ts.append(time.perf_counter() - t0)
        cold = json.loads(subprocess.run([PY, "-c", COLD, str(store), sq.name], capture_output=True, text=True,
                                         check=True).stdout.strip().splitlines()[-1])
        out[sq.name] = {"first": first, "warm": min(ts), "cold_process": cold}
    return out


def sql_process(store: Path, repeat: int) -> dict:
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run([ACTDB, "sql", str(store), "SELECT count(*) FROM neurons"], check=True, capture_output=True)
        ts.append(time.perf_counter() - t0)
    return {"best": min(ts), "median": statistics.median(ts)}


def measure(model: str, n_tokens: int, work: Path, repeat: int, forward_tokens: int) -> dict:
    store = work / f"{model}-{n_tokens}"
    rec: dict = {"model": model, "tokens_asked": n_tokens, "stamp": stamp()}
    print(f"== {model} {n_tokens:,} tokens  {rec['stamp']}", flush=True)
    ing = run_peak([ACTDB, "ingest", str(MODELS[model]), str(corpus(work)), "-o", str(store), "--overwrite",
                    "--max-tokens", str(n_tokens), "--seq-len", str(SEQ_LEN), "--batch-size", str(BATCH),
                    "--no-index", "--device", "cpu"])
    import actdb

    T = actdb.open(store).n_tokens
    rec["tokens"] = T
    rec["ingest"] = {k: ing[k] for k in ("wall", "cpu", "maxrss")}
    rec["ingest"]["tok_per_s"] = T / ing["wall"]
    fw, fc, fn = bare_forward(MODELS[model], store, forward_tokens)
    rec["forward"] = {"wall": fw * T / fn, "cpu": fc * T / fn, "measured_tokens": fn, "tok_per_s": fn / fw}
    rec["ingest"]["x_forward_wall"] = ing["wall"] / rec["forward"]["wall"]
    rec["ingest"]["x_forward_cpu"] = ing["cpu"] / rec["forward"]["cpu"]
    print(f"  ingest {ing['wall']:.0f} s ({T / ing['wall']:.0f} tok/s), {ing['maxrss'] / 2**30:.2f} GiB; "
          f"forward {fn / fw:.0f} tok/s", flush=True)
    index(rec, store)
    rec["storage"] = storage(store)
    rec["queries"] = queries(store, repeat)
    rec["sql_process"] = sql_process(store, repeat)
    chk = run_peak([ACTDB, "check", str(store)])
    rec["check"] = {k: chk[k] for k in ("wall", "cpu", "maxrss")}
    rep = run_peak([ACTDB, "report", str(store), "-o", str(work / f"report-{model}-{n_tokens}")])
    rec["report"] = {k: rep[k] for k in ("wall", "cpu", "maxrss")}
    srv = run_peak([PY, "-c", SERVE, str(store), str(ROOT / "benchmarks"), str(repeat)])
    rec["serve"] = {"maxrss": srv["maxrss"], "wall": srv["wall"],
                    "pages": json.loads(srv["log"].split("PAGES", 1)[1])}
    worst = max(p[2] for p in rec["serve"]["pages"])
    print(f"  check {chk['wall']:.0f} s, report {rep['wall']:.0f} s ({rep['maxrss'] / 2**30:.2f} GiB), "
          f"serve {srv['maxrss'] / 2**30:.2f} GiB, worst warm page {worst:.0f} ms, "
          f"worst warm query {max(q.get('warm', 0) for q in rec['queries'].values()):.3f} s", flush=True)
    return rec


def index(rec: dict, store: Path, force: bool = False) -> None:
    """Time `actdb index` on the store into rec["index"] (against rec["forward"])."""
    idx = run_peak([ACTDB, "index", str(store)] + (["--force"] if force else []))
    rec["index"] = {k: idx[k] for k in ("wall", "cpu", "maxrss", "anon", "file")}
    rec["index"]["x_forward_wall"] = idx["wall"] / rec["forward"]["wall"]
    rec["index"]["x_forward_cpu"] = idx["cpu"] / rec["forward"]["cpu"]
    print(f"  index {idx['wall']:.0f} s, {idx['maxrss'] / 2**30:.2f} GiB", flush=True)


def reindex(model: str, n_tokens: int, work: Path) -> dict:
    """The index of a kept store (--keep) measured again, after a change to the index: the rest of
    its record stays as it was measured."""
    store = work / f"{model}-{n_tokens}"
    recs = json.loads((work / "scale.json").read_text()) if (work / "scale.json").exists() else []
    rec = next((r for r in recs if (r["model"], r["tokens_asked"]) == (model, n_tokens)), None)
    if rec is None or not store.is_dir():
        raise SystemExit(f"{store}: no kept store with a record in {work / 'scale.json'}; measure it first with --keep")
    rec["index_stamp"] = stamp()
    print(f"== {model} {n_tokens:,} tokens, index again  {rec['index_stamp']}", flush=True)
    index(rec, store, force=True)
    return rec


def save(work: Path, rec: dict) -> None:
    path = work / "scale.json"
    recs = [r for r in (json.loads(path.read_text()) if path.exists() else [])
            if (r["model"], r["tokens_asked"]) != (rec["model"], rec["tokens_asked"])]
    path.write_text(json.dumps(sorted(recs + [rec], key=lambda r: (r["model"], r["tokens"])), indent=1))


def plot(work: Path, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = json.loads((work / "scale.json").read_text())
    measures = {
        "peak RSS, GiB": [(s, lambda r, s=s: r[s]["maxrss"] / 2**30) for s in ("ingest", "index", "report", "serve")],
        "wall s": [(s, lambda r, s=s: r[s]["wall"]) for s in ("ingest", "index", "check", "report")],
        "ratio to the forward (CPU)": [(s, lambda r, s=s: r[s]["x_forward_cpu"]) for s in ("ingest", "index")],
        "mask bytes ratio": [("÷ entropy bound", lambda r: r["storage"]["x_entropy"]),
                             ("÷ dense fp16", lambda r: r["storage"]["x_fp16"])],
        "warm s, worst saved query / whole sql process": [
            ("worst saved query", lambda r: max(q.get("warm", 0) for q in r["queries"].values())),
            ("sql process (best)", lambda r: r["sql_process"]["best"])],
        "warm ms, worst explorer page": [("worst page", lambda r: max(p[2] for p in r["serve"]["pages"]))],
    }
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, (title, lines) in zip(axes.ravel(), measures.items()):
        for model in sorted({r["model"] for r in recs}):
            rs = [r for r in recs if r["model"] == model]
            for label, f in lines:
                ax.plot([r["tokens"] for r in rs], [f(r) for r in rs], "o-", label=f"{model}: {label}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tokens")
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="minilm")
    ap.add_argument("--tokens", default="1000000", help="comma-separated token counts")
    ap.add_argument("--work", default=str(ROOT / ".cache" / "bench" / "scale"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--forward-tokens", type=int, default=32768, help="tokens the bare forward is timed on")
    ap.add_argument("--keep", action="store_true", help="keep each store (default: removed after it is measured)")
    ap.add_argument("--plot", action="store_true", help="draw the figure from WORK/scale.json and stop")
    ap.add_argument("--reindex", action="store_true",
                    help="rebuild and time only the index of each kept store (its other records stay)")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.plot:
        plot(work, ROOT / "benchmarks" / "figures" / "scale.png")
        return
    if not MODELS[args.model].exists():
        raise SystemExit(f"{MODELS[args.model]}: not there; `bash ingest/demo.sh` makes it")
    for n in (int(x) for x in args.tokens.split(",")):
        if args.reindex:
            save(work, reindex(args.model, n, work))
            continue
        rec = measure(args.model, n, work, args.repeat, args.forward_tokens)
        save(work, rec)
        if not args.keep:
            import shutil
            shutil.rmtree(work / f"{args.model}-{n}", ignore_errors=True)


if __name__ == "__main__":
    main()
