"""Fire rules' cost: `actdb ingest` with 1 rule (sign) against 3 rules (sign and two
magnitude rules) in one forward, in one run, and the mask bytes each rule takes.

    python benchmarks/bench_fire_rules.py --model smollm2 --tokens 6144 --rounds 2

One untimed warm-up ingest first; then per round the 1-rule and the 3-rule ingest back to back
(the host's speed drifts within a run, so each ratio is taken within a pair; every round and the
medians printed, with the process CPU seconds of each ingest, which a loaded host disturbs less).
In-process, without the query index, --capture resid (the default), --block-tokens 2048 so the
top:Q rules' first block (where they keep candidates) is a third of the tokens. Corpus: real
text (benchmarks/_common.text_corpus).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import WORK, dir_bytes, opt125m_random, smollm2, stamp, table, text_corpus  # noqa: E402

THREE = ("sign", "top:0.99", "top:0.999")


def main() -> None:
    import actdb
    from actdb.store.layout import MASKS_DIR, rule_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", choices=("smollm2", "opt125m"))
    ap.add_argument("--tokens", type=int, default=6144)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    model = smollm2() if args.model == "smollm2" else opt125m_random()
    corpus = text_corpus()

    def ingest(out: Path, rules: tuple[str, ...], tokens: int):
        cpu = time.process_time()
        r = actdb.ingest.run(actdb.IngestSettings(
            model=str(model), corpus=(str(corpus),), out=str(out), max_tokens=tokens, seq_len=256, batch_size=8,
            block_tokens=2048, fire_rule=rules, index=False, progress=False, overwrite=True))
        return r.seconds, r.forward_seconds, time.process_time() - cpu

    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        print(stamp(), "(start)")
        ingest(Path(tmp) / "warm", ("sign",), 2048)
        runs: dict[str, list] = {"1": [], "3": []}
        for _ in range(args.rounds):
            for key, rules in (("1", ("sign",)), ("3", THREE)):
                runs[key].append(ingest(Path(tmp) / key, rules, args.tokens))
        ratios = [[b[i] / a[i] for i in range(3)] for a, b in zip(runs["1"], runs["3"])]
        st = actdb.open(Path(tmp) / "3")
        m = st.manifest
        cells = m.n_tokens * len(m.layers) * m.d_ffn
        rows = []
        for rule in st.rules:
            h = st.with_rule(rule)
            nbytes = dir_bytes(rule_dir(st.path, rule) / MASKS_DIR)
            fires = sum(int(h.masks(l).sum()) for l in m.layers)
            rows.append([rule, f"{fires / cells:.4f}", f"{nbytes / 1e6:.3f}", f"{8 * nbytes / cells:.4f}"])
        print(stamp(), "(end)")
        print(f"# {args.model}, {m.n_tokens:,} tokens, {len(m.layers)} x {m.d_ffn} neurons, {args.rounds} rounds; "
              f"3 rules: {', '.join(THREE)}")
        cols = ("wall s", "forward s", "CPU s")
        rows_t = [[f"round {i + 1}", *(f"{a[k]:.1f} / {b[k]:.1f} ({r[k]:.3f})" for k in range(3))]
                  for i, (a, b, r) in enumerate(zip(runs["1"], runs["3"], ratios))]
        rows_t.append(["median ratio 3 / 1", *(f"{statistics.median(r[k] for r in ratios):.3f}" for k in range(3))])
        print(table(["", *(f"{c}: 1 rule / 3 rules (ratio)" for c in cols)], rows_t))
        print()
        print(table(["rule", "fire rate", "mask MB", "bits per (token, neuron)"], rows))


if __name__ == "__main__":
    main()
