"""The measurement behind the demo's magnitude rule for SmolLM2 (docs/FINDINGS.md, "Fire rules"):
one ingest of the first --tokens tokens of the demo corpus under sign and every candidate rule (one
forward), then, per rule, what the paper's questions give: fire rate, dead neurons, token detectors
and the tokens they detect, the suppression share, positional neurons.

    python ingest/choose_rule.py --tokens 8192
    python ingest/choose_rule.py --table-only   # the table again, from the store the last run left
    python ingest/choose_rule.py --tokens 49152 --rules top:0.995,ntop:0.995,glu:++,glu:+-,glu:-+,glu:--

The first block, which fixes the top:Q and ntop:Q thresholds, is the demo's (32,768 tokens) however
many rules are recorded: --block-memory-mb is raised to hold one block of every rule's masks.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus_demo import DOMAINS, build_corpus  # noqa: E402
from demo import CHARS_PER_TOKEN, ROOT, models  # noqa: E402

CANDIDATES = ("top:0.99", "top:0.995", "top:0.999", "abs>0.5", "ntop:0.995", "glu:++", "glu:+-", "glu:-+", "glu:--")
BLOCK_TOKENS = 32768   # the demo's first block (actdb ingest's default --block-tokens)
QUESTIONS = {
    "fire rate": "SELECT avg(freq) FROM neurons",
    "dead %": "SELECT 100 * avg(dead::INT) FROM neurons",
    "token detectors": "SELECT count(*) FROM token_detectors",
    "detected tokens": "SELECT count(DISTINCT id) FROM (SELECT unnest(token_ids) AS id FROM token_detectors)",
    "detectors firing >= 10 times": "SELECT count(*) FROM token_detectors JOIN neurons USING (layer, neuron) "
                                    "WHERE fires >= 10",
    "median fires per neuron": "SELECT median(fires) FROM neurons",
    "suppressing %": "SELECT 100 * avg(suppresses::INT) FROM detector_suppression",
    "positional": "SELECT count(*) FROM positional_neurons",
}


def ingest(out: Path, args) -> None:
    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "corpus.jsonl"
    build_corpus(corpus, ROOT / ".cache", chars_per_domain=int(args.tokens * CHARS_PER_TOKEN / len(DOMAINS) * 1.25),
                 seed=0)
    model = models(ROOT / ".cache", ["smollm2"])["smollm2"]
    rules = ["sign", *args.rules.split(",")]
    actdb_bin = str(Path(sys.executable).with_name("actdb"))
    config = json.loads((model / "config.json").read_text())
    block_mb = len(rules) * config["num_hidden_layers"] * config["intermediate_size"] * BLOCK_TOKENS / 8 / 2**20
    subprocess.run([actdb_bin, "ingest", str(model), str(corpus), "-o", str(out / "store"), "--max-tokens",
                    str(args.tokens), "--block-tokens", str(BLOCK_TOKENS), "--block-memory-mb", str(math.ceil(block_mb)),
                    "--overwrite", "--no-progress", *[a for r in rules for a in ("--fire-rule", r)]], check=True)


def main() -> None:
    import actdb

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--out", default=str(ROOT / "demo-out" / "choose-rule"))
    ap.add_argument("--rules", default=",".join(CANDIDATES))
    ap.add_argument("--table-only", action="store_true", help="no ingest: the table of the store in --out")
    args = ap.parse_args()
    out = Path(args.out)
    if not args.table_only:
        ingest(out, args)
    st = actdb.open(out / "store")
    print(f"{st.manifest.n_tokens:,} tokens")
    print("| rule | " + " | ".join(QUESTIONS) + " |")
    print("|---|" + "---|" * len(QUESTIONS))
    for rule in st.rules:
        vals = [st.sql(q, {"rule": rule}).item() for q in QUESTIONS.values()]
        print(f"| `{rule}` | " + " | ".join("—" if v is None else f"{v:.4g}" if isinstance(v, float) else f"{v:,}"
                                             for v in vals) + " |")


if __name__ == "__main__":
    main()
