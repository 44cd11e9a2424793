"""Loading a Hugging Face model for ingest: where its files are, which device and dtype,
whether to stream its layers, and the identity recorded in the manifest."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .adapters import Adapter, adapter_for, get_module
from ..errors import InputError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")


@dataclass
class LoadedModel:
    model: torch.nn.Module       # the whole model (its LM head only for vocabulary projection)
    base: torch.nn.Module        # model.base_model: no LM head, which ingest never runs
    layers: torch.nn.ModuleList
    config: object
    adapter: Adapter
    model_class: str
    device: torch.device
    dtype: torch.dtype
    streamer: object | None      # offload.LayerStreamer when streaming layers


def resolve_model_dir(model: str, revision: str | None) -> tuple[Path, str | None]:
    """A local folder, or the hub snapshot of a model id (downloaded if needed)."""
    path = Path(model)
    if path.is_dir():
        return path, revision
    if path.exists() or model.startswith((".", "/")):
        raise InputError(f"{model}: not a model folder")
    try:
        from huggingface_hub import snapshot_download

        snap = Path(snapshot_download(model, revision=revision,
                                      allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*"]))
    except Exception as e:  # the hub client raises many types: offline, 404, auth
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{model}: unknown model (not a local folder, and the hub said: {first})") from None
    return snap, snap.name


def load_config(model_dir: Path):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_dir)
    except Exception as e:  # a folder without config.json, or an unknown model_type
        raise InputError(f"{model_dir}: cannot read the model config ({str(e).splitlines()[0]})") from None


def max_positions(config) -> int | None:
    """The most positions the model was built for (learned position tables end there; rotary
    models were trained up to it), or None where the config does not say."""
    for attr in ("max_position_embeddings", "n_positions"):
        n = getattr(config, attr, None)
        if isinstance(n, int) and n > 0:
            return n
    return None


def check_seq_len(config, seq_len: int) -> None:
    """Refuse --seq-len beyond the model's positions before any store or model time: a learned
    position table fails deep in the forward with an IndexError otherwise."""
    n = max_positions(config)
    if n is not None and seq_len > n:
        raise InputError(f"--seq-len: expected at most {n} (the model's maximum positions), got {seq_len}")


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except Exception as e:
        raise InputError(f"{model_dir}: cannot load the tokenizer ({str(e).splitlines()[0]})") from None


def choose_dtype(setting: str, config, device: torch.device) -> torch.dtype:
    if setting != "auto":
        return getattr(torch, setting)
    # transformers 5 reads a config.json's legacy "torch_dtype" into .dtype; reading the old
    # attribute only prints "`torch_dtype` is deprecated"
    dt = getattr(config, "dtype", None)
    if isinstance(dt, str):
        dt = getattr(torch, dt, None)
    if not isinstance(dt, torch.dtype):
        return torch.float32
    if dt == torch.float16 and device.type == "cpu":
        return torch.float32  # fp16 matmuls are slow or missing on CPUs
    return dt


def weight_files(model_dir: Path) -> list[Path]:
    return sorted(p for p in model_dir.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())


def weights_sha256(model_dir: Path) -> str:
    """One hash over every weight file (name and content), so a store names its exact weights."""
    h = hashlib.sha256()
    for p in weight_files(model_dir):
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def model_bytes(config, dtype: torch.dtype) -> int:
    """Parameter bytes at the compute dtype, from the checkpoint's shapes (no weights read)."""
    from transformers import AutoModel

    with torch.device("meta"):
        skeleton = AutoModel.from_config(config)
    n = sum(p.numel() for p in skeleton.parameters())
    return n * torch.finfo(dtype).bits // 8 if dtype.is_floating_point else n * 4


def should_offload(setting: str, config, dtype: torch.dtype, device: torch.device) -> bool:
    if setting != "auto":
        return setting == "on"
    # leave room for activations and the mask buffers
    return model_bytes(config, dtype) > 0.7 * available_memory(device)


def load_model(model_dir: Path, config, device: torch.device, dtype: torch.dtype, offload: bool) -> LoadedModel:
    from transformers import AutoModel, AutoModelForCausalLM

    adapter = adapter_for(config.model_type)
    cls = AutoModelForCausalLM if adapter.decoder else AutoModel
    streamer = None
    try:
        if offload:
            from .offload import LayerStreamer, empty_model

            model = empty_model(cls, config, dtype)
            layers = get_module(model.base_model, adapter.layers)
            streamer = LayerStreamer(model, layers, model_dir, device, dtype)
        else:
            from .offload import check_shapes, empty_model, missing_weights

            # from_pretrained refuses a mismatch too, but in a multi-line report on stderr
            skeleton = empty_model(cls, config, dtype)
            skeleton_layers = get_module(skeleton.base_model, adapter.layers)
            check_shapes(skeleton, model_dir, require_all=False)
            model, info = cls.from_pretrained(model_dir, dtype=dtype, output_loading_info=True)
            # what the weights lack, from_pretrained initialises at random: refused, as layer by layer
            # (an LM head only feeds vocabulary projection)
            missing = sorted(k for k in info["missing_keys"] if "lm_head" not in k)
            if missing:
                raise InputError(missing_weights(skeleton, model_dir, missing, skeleton_layers))
            model.to(device)
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{model_dir}: cannot load the model ({str(e).splitlines()[0]})") from None
    model.eval()
    base = model.base_model
    return LoadedModel(model=model, base=base, layers=get_module(base, adapter.layers), config=config, adapter=adapter,
                       model_class=type(model).__name__, device=device, dtype=dtype, streamer=streamer)
