"""Peak memory of `actdb ingest` with and without layer-by-layer offload.

    .venv/bin/python benchmarks/bench_offload_rss.py [--layers 12] [--docs 120] [--keep DIR]

Saves a seeded random LLaMA-shaped model (hidden 1024, intermediate 4096, 16 heads,
vocab 32000, 12 layers: 67 MB of fp32 weights per block, 131 MB per embedding matrix,
1.07 GB in all) with the word-level tokenizer of tests/tiny.py, and a JSONL corpus made
with tests/tiny.make_corpus, then runs `.venv/bin/actdb ingest` as a subprocess:

  baseline     the tiny tests/tiny.py llama (no weights to speak of): the cost of Python,
               torch, transformers, zarr, polars and actdb's own buffers
  offload on   corpus 1x and 4x
  offload off  corpus 1x and 4x

  offload on   1x again with MALLOC_MMAP_THRESHOLD_=131072 (a diagnostic: glibc then
               returns every large freed buffer to the OS instead of keeping it in its heap)

For each run it reports, sampled every 20 ms from /proc/PID/status, the peak RSS (VmHWM,
the kernel's own high-water mark of this process image), and the largest RssAnon (private
memory: weights copied out, activations, buffers, malloc heap) and RssFile (file pages
mapped into the process, e.g. a memory-mapped safetensors file: counted in RSS, but clean
page cache that the kernel can drop). ru_maxrss from wait4 is NOT used: Linux carries the
parent's high-water mark across fork+exec, so it reports this script's own peak (which
built the model) when that is larger. Then it checks that the offload and non-offload
stores hold identical masks.

    .venv/bin/python benchmarks/bench_offload_rss.py --probe MODEL CORPUS

traces RssAnon/RssFile in-process around load_model and before/after each block's
load and drop (actdb.offload.LayerStreamer), for the first two batches; --probe-patched
does the same with the trial fix of patch_streamer applied.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import ACTDB, MB, _status, run_peak  # noqa: E402


def make_big_llama(path: Path, layers: int, seed: int = 0) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tests.tiny import make_tokenizer

    path.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(path, "llama")
    config = AutoConfig.for_model("llama", vocab_size=32000, pad_token_id=0, bos_token_id=2, eos_token_id=3,
                                  hidden_size=1024, intermediate_size=4096, num_hidden_layers=layers,
                                  num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=512,
                                  tie_word_embeddings=False)
    assert len(tok) <= config.vocab_size
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(path)
    per = {}
    for n, p in model.named_parameters():
        key = "layer" if ".layers.0." in n else ("layers" if ".layers." in n else n)
        per[key] = per.get(key, 0) + p.numel() * p.element_size()
    per["layers"] = per.get("layers", 0) + per["layer"]
    per["total"] = sum(p.numel() * p.element_size() for p in model.parameters())
    return per


def run_ingest(model: Path, corpus: Path, out: Path, offload: str, batch: int, env: dict | None = None) -> dict:
    cmd = [ACTDB, "ingest", str(model), str(corpus), "-o", str(out), "--offload", offload,
           "--batch-size", str(batch), "--no-progress", "--overwrite", "--no-index"]  # the index is measured apart
    return run_peak(cmd, env)


def probe(model: str, corpus: str, offload: str = "on", batch: int = 4) -> None:
    """In-process trace of RssAnon/RssFile around the model load and each block's load/drop."""
    import actdb.ingest.offload as off
    import actdb.ingest.pipeline as pl
    from actdb.settings import IngestSettings

    seen = {"batch": 0}

    def st(tag):
        s = _status(os.getpid())
        if seen["batch"] <= 2 or tag.startswith(("end", "after load_model")) or os.environ.get("PROBE_ALL"):
            print(f"{tag:40s} RssAnon {s['RssAnon'] / MB:6.0f} MiB  RssFile {s['RssFile'] / MB:6.0f} MiB  "
                  f"VmHWM {s['VmHWM'] / MB:6.0f} MiB", flush=True)

    ob, oa, olm = off.LayerStreamer._before, off.LayerStreamer._after, pl.load_model

    def before(self, layer, args):
        name = self.names[id(layer)]
        if name.endswith(".0"):
            seen["batch"] += 1
        st(f"batch {seen['batch']} {name}: before load")
        ob(self, layer, args)
        st("    after load (get_tensor)")

    def after(self, layer, args, output):
        oa(self, layer, args, output)
        st("    after forward + drop")

    def load_model(*a, **k):
        st("before load_model")
        r = olm(*a, **k)
        st("after load_model")
        return r

    off.LayerStreamer._before, off.LayerStreamer._after, pl.load_model = before, after, load_model
    out = tempfile.mkdtemp(prefix="bench_rss_probe_")
    st("start")
    import dataclasses

    extra = {"index": False} if "index" in {f.name for f in dataclasses.fields(IngestSettings)} else {}
    pl.ingest(IngestSettings(model=model, corpus=(corpus,), out=out, offload=offload, batch_size=batch,
                             overwrite=True, progress=False, **extra))
    seen["batch"] = 0
    st("end (ingest returned)")
    shutil.rmtree(out, ignore_errors=True)


def patch_streamer(model_dir: str) -> None:
    """Trial fix (monkeypatch, actdb/ untouched): each block's tensors come from a fresh
    safe_open handle and are copied out (clone), so the handle and its mmap go away right
    after the load; after each block is dropped, malloc_trim(0) returns freed heap to the OS."""
    import ctypes

    from safetensors import safe_open

    import actdb.ingest.offload as off

    libc = ctypes.CDLL("libc.so.6")

    class Cloning:
        def __init__(self, h):
            self.h = h

        def get_tensor(self, k):
            return self.h.get_tensor(k).clone()

    ob, oa = off.LayerStreamer._before, off.LayerStreamer._after

    def before(self, layer, args):
        hs = [safe_open(str(f), framework="pt", device="cpu") for f in sorted(Path(model_dir).glob("*.safetensors"))]
        saved, self.key_file = self.key_file, {k: Cloning(h) for h in hs for k in h.keys()}
        try:
            ob(self, layer, args)
        finally:
            self.key_file = saved

    def after(self, layer, args, output):
        oa(self, layer, args, output)
        libc.malloc_trim(0)

    off.LayerStreamer._before, off.LayerStreamer._after = before, after


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("--probe", "--probe-patched"):
        if sys.argv[1] == "--probe-patched":
            patch_streamer(sys.argv[2])
        return probe(*sys.argv[2:4])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--docs", type=int, default=120, help="documents in the 1x corpus (about 35 tokens each)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--keep", default=None, help="work folder to keep (default: a temp dir, removed)")
    args = ap.parse_args()
    from tests.tiny import make_corpus, make_model

    work = Path(args.keep or tempfile.mkdtemp(prefix="bench_rss_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cpus, {platform.machine()}, "
          f"python {platform.python_version()}")
    t = time.perf_counter()
    sizes = make_big_llama(work / "model", args.layers)
    make_model(work / "tiny", "llama")
    c1 = make_corpus(work / "c1.jsonl", n_docs=args.docs, seed=1)
    c4 = make_corpus(work / "c4.jsonl", n_docs=4 * args.docs, seed=1)
    files = {p.name: p.stat().st_size for p in (work / "model").glob("*.safetensors")}
    print(f"# model saved in {time.perf_counter() - t:.0f}s: {files}; weights fp32 {sizes['total'] / MB:.0f} MiB, "
          f"one block {sizes['layer'] / MB:.1f} MiB, all blocks {sizes['layers'] / MB:.0f} MiB, "
          f"embed_tokens {sizes.get('model.embed_tokens.weight', 0) / MB:.0f} MiB, "
          f"lm_head {sizes.get('lm_head.weight', 0) / MB:.0f} MiB")

    import gc

    gc.collect()
    runs = [("baseline (tiny llama)", work / "tiny", c1, "off", None),
            ("offload on, 1x", work / "model", c1, "on", None),
            ("offload off, 1x", work / "model", c1, "off", None),
            ("offload on, 4x", work / "model", c4, "on", None),
            ("offload off, 4x", work / "model", c4, "off", None),
            ("offload on, 1x, MALLOC_MMAP_THRESHOLD_=131072", work / "model", c1, "on",
             {"MALLOC_MMAP_THRESHOLD_": "131072"})]
    res = {}
    print("\n| run | tokens | peak RSS MiB | peak RssAnon MiB | peak RssFile MiB | wall s |")
    print("|---|---|---|---|---|---|")
    for name, model, corpus, off, env in runs:
        out = work / f"store-{len(res)}"
        r = run_ingest(model, corpus, out, off, args.batch_size, env)
        import actdb

        r["tokens"] = actdb.open(out).n_tokens
        r["out"] = out
        res[name] = r
        print(f"| {name} | {r['tokens']:,} | {r['maxrss'] / MB:.0f} | {r['anon'] / MB:.0f} | {r['file'] / MB:.0f} "
              f"| {r['wall']:.1f} |", flush=True)
    print(f"\n# command: {res['offload on, 1x']['cmd']}")

    import numpy as np

    import actdb

    for pair in (("offload on, 1x", "offload off, 1x"), ("offload on, 4x", "offload off, 4x")):
        a, b = actdb.open(res[pair[0]]["out"]), actdb.open(res[pair[1]]["out"])
        same = all(np.array_equal(a.masks(l), b.masks(l)) for l in a.manifest.layers)
        fired = sum(int(a.masks(l).sum()) for l in a.manifest.layers)
        print(f"# masks {pair[0]} == {pair[1]}: {same} ({len(a.manifest.layers)} layers, {a.n_tokens:,} tokens, "
              f"{fired:,} firings)")
    base = res["baseline (tiny llama)"]["maxrss"]
    base_anon = res["baseline (tiny llama)"]["anon"]
    for name, r in res.items():
        if name.startswith("baseline"):
            continue
        print(f"# {name}: peak RSS - baseline = {(r['maxrss'] - base) / MB:.0f} MiB = "
              f"{(r['maxrss'] - base) / sizes['layer']:.1f} blocks = {(r['maxrss'] - base) / sizes['total']:.2f} x model; "
              f"RssAnon - baseline = {(r['anon'] - base_anon) / MB:.0f} MiB = {(r['anon'] - base_anon) / sizes['layer']:.1f} blocks")
    (work / "results.json").write_text(json.dumps({k: {kk: vv for kk, vv in v.items() if kk not in ("out", "log")}
                                                   for k, v in res.items()} | {"sizes": sizes}, indent=1))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
