"""Layer-by-layer ingest for models larger than the device (or host) memory.

The model is built on the meta device; everything outside the blocks (embeddings,
final norm) is loaded once, and each block's weights are read from the memory-mapped
safetensors right before the block runs and dropped right after. The whole batch
(a large chunk of tokens) goes through block l before block l+1 is loaded, so the
model's own forward code (masks, rotary embeddings, caches) stays untouched.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import InputError


def empty_model(cls, config, dtype: torch.dtype) -> torch.nn.Module:
    from accelerate import init_empty_weights

    with init_empty_weights():  # parameters on meta, buffers (rotary tables) real
        return cls.from_config(config, dtype=dtype)


def checkpoint_key(name: str, prefix: str, keys) -> str | None:
    """The checkpoint's key for a model tensor name: checkpoints of a base model lack the
    `prefix.` (base_model_prefix) that a model with a head puts in front, and the reverse."""
    p = prefix + "."
    for cand in (name, name[len(p):] if name.startswith(p) else p + name):
        if cand in keys:
            return cand
    return None


def checkpoint_shapes(model_dir: Path) -> dict[str, tuple[int, ...]]:
    """Shape of every tensor in the folder's .safetensors files, from their headers (no data read)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), framework="pt", device="cpu") as h:
            shapes.update({k: tuple(h.get_slice(k).get_shape()) for k in h.keys()})
    return shapes


def check_shapes(model: torch.nn.Module, model_dir: Path, require_all: bool,
                 layers: torch.nn.ModuleList | None = None) -> None:
    """Every tensor of a model skeleton (built from config.json) against the checkpoint's
    .safetensors shapes; a mismatch is one line naming the tensor and both shapes.
    require_all: a parameter the checkpoint lacks is an error too (see missing_weights; layers:
    the skeleton's blocks, to say so by layer)."""
    shapes = checkpoint_shapes(model_dir)
    if not shapes:
        return  # .bin or .gguf weights: from_pretrained checks those
    prefix = model.base_model_prefix
    items = [(n, t, True) for n, t in model.named_parameters()] + \
            [(n, t, False) for n, t in model.named_buffers()]
    missing = []
    for name, tensor, is_param in items:
        key = checkpoint_key(name, prefix, shapes)
        if key is None:
            # buffers are mostly computed (rotary tables); an LM head only feeds vocabulary
            # projection, which falls back to the input embeddings
            if require_all and is_param and "lm_head" not in name:
                missing.append(name)
            continue
        if tuple(tensor.shape) != shapes[key]:
            raise InputError(f"{model_dir}: weight {key}: expected shape {list(tensor.shape)} (from config.json), "
                             f"the checkpoint has {list(shapes[key])}")
    if missing:
        raise InputError(missing_weights(model, model_dir, missing, layers))


def missing_weights(model: torch.nn.Module, model_dir: Path, missing: list[str],
                    layers: torch.nn.ModuleList | None = None) -> str:
    """One line for the parameters of `model` (built from config.json) that its weights lack: a
    model is refused then, whatever the loading mode, since a parameter without weights would be
    random and two ingests of one model would record different masks. Whole blocks missing (a
    config with more layers than the weights) are said as such."""
    if layers is not None:
        where = next(n for n, m in model.named_modules() if m is layers)
        gone = set(missing)
        empty = [i for i, block in enumerate(layers)
                 if all(f"{where}.{i}.{n}" in gone for n, _ in block.named_parameters())]
        if empty:
            more = f" and {len(empty) - 1} more layer(s)" if len(empty) > 1 else ""
            return (f"{model_dir}: config.json has {len(layers)} layers, the weights hold {len(layers) - len(empty)} "
                    f"(no weights for {where}.{empty[0]}.*{more})")
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    return f"{model_dir}: weight {missing[0]} not found in the checkpoint{more}"


class LayerStreamer:
    def __init__(self, model: torch.nn.Module, layers: torch.nn.ModuleList, model_dir: Path,
                 device: torch.device, dtype: torch.dtype) -> None:
        from safetensors import safe_open

        files = sorted(Path(model_dir).glob("*.safetensors"))
        if not files:
            raise InputError(f"{model_dir}: layer-by-layer mode needs .safetensors weights, found none")
        # key -> file, not open handles: a tensor from an open safetensors handle maps the file,
        # and the mapping would keep every block's pages resident (measured: ~1.7x the model)
        self.key_file: dict[str, str] = {}
        for f in files:
            with safe_open(str(f), framework="pt", device="cpu") as h:
                self.key_file.update({k: str(f) for k in h.keys()})
        self.device, self.dtype = device, dtype
        self.prefix = model.base_model_prefix
        # before the first forward: a block loaded lazily would otherwise fail mid-ingest or,
        # with a config wider than the weights, run on invented neurons
        check_shapes(model, model_dir, require_all=True, layers=layers)
        self.resident = 0        # blocks whose weights are in memory now
        self.max_resident = 0    # the most there ever were at once (a test checks it is 1)
        self.loads = 0
        layer_ids = {id(m) for layer in layers for m in layer.modules()}
        for name, module in model.named_modules():
            if id(module) in layer_ids:
                continue
            self._load(module, name, recurse=False)
        block_ids = {id(layer) for layer in layers}
        self.names = {id(m): name for name, m in model.named_modules() if id(m) in block_ids}
        for layer in layers:
            layer.register_forward_pre_hook(self._before)
            layer.register_forward_hook(self._after)

    def _key(self, name: str) -> str | None:
        return checkpoint_key(name, self.prefix, self.key_file)

    def _load(self, module: torch.nn.Module, prefix: str, recurse: bool = True) -> None:
        from safetensors import safe_open

        items = [(n, t, True) for n, t in module.named_parameters(recurse=recurse)] + \
                [(n, t, False) for n, t in module.named_buffers(recurse=recurse)]
        by_file: dict[str, list] = {}
        for name, tensor, is_param in items:
            full = f"{prefix}.{name}" if prefix else name
            key = self._key(full)
            if key is None:
                if is_param and tensor.is_meta and "lm_head" not in full and not prefix.startswith("lm_head"):
                    raise InputError(f"layer-by-layer mode: weight {full} not found in the checkpoint")
                continue
            by_file.setdefault(self.key_file[key], []).append((name, key, is_param))
        for path, entries in by_file.items():
            with safe_open(path, framework="pt", device="cpu") as h:
                for name, key, is_param in entries:
                    value = h.get_tensor(key)
                    # copy=True: own the memory, so no mapping of the file outlives this block
                    value = value.to(self.device, self.dtype if value.is_floating_point() else value.dtype, copy=True)
                    owner, leaf = _owner(module, name)
                    if is_param:
                        owner._parameters[leaf] = torch.nn.Parameter(value, requires_grad=False)
                    else:
                        owner._buffers[leaf] = value

    def tensor(self, name: str) -> torch.Tensor | None:
        """One checkpoint tensor by model name (a copy), or None if the checkpoint lacks it."""
        from safetensors import safe_open

        key = self._key(name)
        if key is None:
            return None
        with safe_open(self.key_file[key], framework="pt", device="cpu") as h:
            return h.get_tensor(key).clone()

    def _before(self, layer, args) -> None:
        self._load(layer, self.names[id(layer)])
        self.loads += 1
        self.resident += 1
        self.max_resident = max(self.max_resident, self.resident)

    def _after(self, layer, args, output) -> None:
        for module in layer.modules():
            for leaf, p in module._parameters.items():
                if p is not None:
                    module._parameters[leaf] = torch.nn.Parameter(
                        torch.empty(p.shape, dtype=p.dtype, device="meta"), requires_grad=False)
        self.resident -= 1
        _trim_heap()


def _owner(module: torch.nn.Module, dotted: str) -> tuple[torch.nn.Module, str]:
    *path, leaf = dotted.split(".")
    for part in path:
        module = getattr(module, part)
    return module, leaf


def _trim_heap() -> None:
    """Give freed block weights back to the OS (glibc keeps large freed arenas otherwise)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
