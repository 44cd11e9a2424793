"""Ingest overhead: wall time of `actdb ingest` ÷ a bare forward pass of the same model over
the same tokens and batches, in one run (SPEC §4 target ≤ 1.15).

    .venv/bin/python benchmarks/bench_ingest_overhead.py --model opt125m --tokens 32768
    .venv/bin/python benchmarks/bench_ingest_overhead.py --model smollm2 --tokens 8192

The bare forward is timed twice: the full model with its LM head (what a user would call a
forward pass), and the base model alone (what ingest actually needs). `actdb ingest` runs
in-process, timed end to end (tokenizing, hashing the weights, loading, writing, indexing
excluded only where said), with each --capture setting.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "ingest"))


def opt125m_random(path: Path) -> Path:
    """A seeded random model shaped like OPT-125m (12 x 768, 3072 neurons, GPT-2 vocabulary)."""
    from demo import build_model  # the demo's GPT-2 BPE tokenizer + OPT builder
    from transformers import OPTConfig, OPTForCausalLM, AutoTokenizer

    if (path / "config.json").exists():
        return path
    build_model(path)  # tokenizer files (and a small model we replace)
    tok = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    config = OPTConfig(vocab_size=50272, hidden_size=768, num_hidden_layers=12, ffn_dim=3072,
                       num_attention_heads=12, max_position_embeddings=2048, word_embed_proj_dim=768,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=1)
    OPTForCausalLM(config).save_pretrained(path)
    return path


def smollm2(path: Path) -> Path:
    sys.path.insert(0, str(ROOT / "ingest"))
    from models_demo import smollm2_dir

    return smollm2_dir(path)


def bare_forward(model_dir: Path, staging_ids: np.ndarray, offsets: np.ndarray, batch: int, base: bool) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    run = model.base_model if base else model
    t0 = time.perf_counter()
    with torch.inference_mode():
        for lo in range(0, len(offsets) - 1, batch):
            hi = min(lo + batch, len(offsets) - 1)
            ids = torch.from_numpy(np.stack([staging_ids[offsets[i]:offsets[i + 1]] for i in range(lo, hi)]).astype(np.int64))
            run(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    return time.perf_counter() - t0


def main() -> None:
    import actdb
    from tiny import make_corpus

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=("opt125m", "smollm2"), default="opt125m")
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--work", default=str(ROOT / ".cache" / "bench"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    mdir = opt125m_random(work / "opt125m-random") if args.model == "opt125m" else ROOT / ".cache" / "smollm2-135m"
    corpus = ROOT / "demo-out" / "corpus.jsonl"
    if not corpus.exists():
        corpus = make_corpus(work / "corpus.jsonl", n_docs=4000, seed=0)
    results = {}
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        stores = {}
        for capture in ("none", "resid", "resid+ffn"):
            out = Path(tmp) / capture
            s = actdb.IngestSettings(model=str(mdir), corpus=(str(corpus),), out=str(out), seq_len=args.seq_len,
                                     batch_size=args.batch_size, max_tokens=args.tokens, capture=capture,
                                     progress=False, offload="off")
            t0 = time.perf_counter()
            summary = actdb.ingest(s)
            results[f"ingest[{capture}]"] = time.perf_counter() - t0
            results[f"ingest[{capture}].forward_loop"] = summary.forward_seconds
            stores[capture] = out
        # the same sequences ingest ran, rebuilt from the store's token table
        store = actdb.open(stores["none"])
        toks = store.tokens().sort("row")
        ids = toks["token_id"].to_numpy()
        seq = toks["seq"].to_numpy()
        offsets = np.concatenate([[0], np.flatnonzero(np.diff(seq)) + 1, [len(seq)]])
        lengths = np.diff(offsets)
        keep = int((lengths == lengths[0]).sum())  # bare forward stacks full-length sequences only
        results["bare_forward_full_model"] = bare_forward(mdir, ids, offsets[:keep + 1], args.batch_size, base=False)
        results["bare_forward_base_model"] = bare_forward(mdir, ids, offsets[:keep + 1], args.batch_size, base=True)
        results["tokens"] = int(store.n_tokens)
    for capture in ("none", "resid", "resid+ffn"):
        results[f"ratio ingest[{capture}] / bare full"] = results[f"ingest[{capture}]"] / results["bare_forward_full_model"]
        results[f"ratio ingest[{capture}] / bare base"] = results[f"ingest[{capture}]"] / results["bare_forward_base_model"]
    print(json.dumps({"model": args.model, **{k: round(v, 3) if isinstance(v, float) else v for k, v in results.items()}},
                     indent=1))


if __name__ == "__main__":
    main()
