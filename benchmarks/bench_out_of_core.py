"""Out-of-core: peak RSS of `actdb ingest` at 1x and 10x tokens, with and without
layer-by-layer offload, against the model's size (target: flat in corpus size; offload
holds about one layer of weights at a time).

    .venv/bin/python benchmarks/bench_out_of_core.py --tokens 4096 --factor 10

Model: the seeded random OPT-125m shape (benchmarks/_common.py), fp32 safetensors;
real text; seq_len 256, batch 8, default capture (resid+ffn), `--block-tokens 4096` so that
10x writes 10 blocks (the block buffer, 12 x 3072 x 4096/8 = 18.9 MB, is then small next to
the weights; at the default 32768 it is 151 MB whatever the corpus). `--no-index`: the
index's peak RSS at 1x and 10x is measured by bench_queries.py (index_peak_rss) on
synthetic stores of 100k and 1M tokens. Each run is a subprocess; peak RSS is its VmHWM
sampled from /proc every 20 ms (see _common.run_peak). A baseline run of a 1-layer model of
the same vocabulary, measured the same way, gives Python + torch + transformers + actdb's
own buffers.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import ACTDB, MB, anon_by_quarter, opt125m_random, run_peak, stamp, table, text_corpus  # noqa: E402


def one_layer(path: Path) -> Path:
    """The OPT-125m-shaped model cut to 1 layer (same embeddings): the fixed cost of the process."""
    from transformers import AutoModelForCausalLM

    if (path / "config.json").exists():
        return path
    src = opt125m_random()
    m = AutoModelForCausalLM.from_pretrained(src)
    m.model.decoder.layers = m.model.decoder.layers[:1]
    m.config.num_hidden_layers = 1
    m.save_pretrained(path)
    for f in src.glob("*"):
        if f.name not in ("config.json", "generation_config.json") and not f.name.endswith(".safetensors"):
            shutil.copy(f, path / f.name)
    return path


def weights(model: Path) -> dict:
    from safetensors import safe_open

    out = {"total": 0, "layer0": 0, "embed": 0}
    for f in model.glob("*.safetensors"):
        with safe_open(str(f), framework="np") as h:
            for k in h.keys():
                s = h.get_slice(k)
                n = int(__import__("numpy").prod(s.get_shape())) * 4  # fp32
                out["total"] += n
                out["layer0"] += n if ".layers.0." in k else 0
                out["embed"] += n if "embed" in k else 0
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--factor", type=int, default=10)
    ap.add_argument("--block-tokens", type=int, default=4096)
    ap.add_argument("--work", default="/tmp/b6/ooc")
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    print(stamp())
    model, corpus = opt125m_random(), text_corpus()
    base_model = one_layer(ROOT / ".cache" / "bench" / "opt125m-random-1layer")
    w = weights(model)
    print(f"# model {model}: fp32 weights {w['total'] / MB:.0f} MiB, one layer {w['layer0'] / MB:.1f} MiB, "
          f"embeddings {w['embed'] / MB:.0f} MiB")
    runs = [("baseline (1 layer), 1x", base_model, args.tokens, "off")]
    for off in ("off", "on"):
        for k in (1, args.factor):
            runs.append((f"offload {off}, {k}x", model, args.tokens * k, off))
    rows, res = [], {}
    base = None
    for name, m, n, off in runs:
        r = run_peak([ACTDB, "ingest", str(m), str(corpus), "-o", str(work / "store"), "--overwrite",
                      "--max-tokens", str(n), "--seq-len", "256", "--batch-size", "8", "--offload", off,
                      "--block-tokens", str(args.block_tokens), "--no-index", "--no-progress"])
        base = base or r["maxrss"]
        res[name] = {k: v for k, v in r.items() if k not in ("log", "trace")}
        above = r["maxrss"] - base
        quarters = " / ".join(f"{a / MB:.0f}" for a in anon_by_quarter(r["trace"]))
        rows.append([name, f"{n:,}", f"{r['maxrss'] / MB:.0f}", f"{r['anon'] / MB:.0f}", quarters, f"{r['file'] / MB:.0f}",
                     f"{above / MB:.0f}", f"{above / w['total']:.2f}", f"{above / max(w['layer0'], 1):.1f}",
                     f"{r['wall']:.0f}"])
        print(f"# {r['cmd']}", flush=True)
    print(table(["run", "tokens", "peak RSS MiB", "peak RssAnon MiB", "RssAnon peak by quarter of the run MiB",
                 "peak RssFile MiB", "above baseline MiB",
                 "÷ model weights", "÷ one layer", "wall s"], rows))
    (work / "results.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
