"""The probe: typed text through the store's own model, fired read as ingest reads it.

The model is the one the manifest names (its folder, or hub id), loaded lazily on the first
probe with the ingest stage's loading and adapters, and used only if its weights are the
store's (the manifest's sha256) and its sign rule is the store's (the sign of the activation
module's output, recorded in words). Fired is the ingest's own hooks and fire tests
(ingest/hooks.py) under the handle's rule, with the thresholds the store recorded. One forward per
request, at most --probe-max-tokens tokens, one request at a time.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from ..errors import ActdbError, InputError
from ..settings import ServeSettings


@dataclass(frozen=True)
class ProbeResult:
    ids: list[int]            # token ids, special tokens included, as ingest sequences them
    fired: np.ndarray         # bool [tokens, d_ffn] of the layer
    cut: bool                 # the text was longer than --probe-max-tokens
    device: str


def _not_here(m) -> str | None:
    """Why the store's model cannot be loaded on this machine, where that shows without loading
    it: a model folder that is not here, or a hub model outside the local cache while the hub
    is offline. None: try it on the first probe (which may still fail, and then says why)."""
    import os
    from pathlib import Path

    if Path(m.model).is_dir():
        return None
    off = "the probe is off: the store's model cannot be loaded here"
    if Path(m.model).exists() or m.model.startswith(("/", ".")):
        return f"{off} ({m.model}: no such model folder on this machine)"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(m.model, "config.json", revision=m.model_revision)
        except Exception:   # a name the hub client refuses: not a hub id either
            cached = None
        if not isinstance(cached, str):
            return f"{off} ({m.model}: not a model folder, and not in the local Hugging Face cache with the hub " \
                   "offline, HF_HUB_OFFLINE)"
    return None


class Probe:
    def __init__(self, store, settings: ServeSettings) -> None:
        self.store, self.s = store, settings
        self._lock = threading.Lock()
        self._loaded = None
        self._why: str | None = _not_here(store.manifest) if settings.probe else \
            "the probe is off: start actdb serve with --probe to load the store's model on this machine"

    def status(self) -> dict:
        """{"on": bool, "why": reason when off}; loading happens on the first probe."""
        return {"on": self._why is None, "why": self._why, "max_tokens": self.s.probe_max_tokens}

    def _load(self):
        from ..ingest.adapters import adapter_for, get_module
        from ..devices import choose_device
        from ..ingest.models import (choose_dtype, load_config, load_model, load_tokenizer, resolve_model_dir,
                                     weights_sha256)

        m = self.store.manifest
        model_dir, _ = resolve_model_dir(m.model, m.model_revision)
        if weights_sha256(model_dir) != m.weights_sha256:
            raise InputError(f"{m.model}: its weights here differ from the store's (sha256), so the probe "
                             "would not show the store's neurons")
        config = load_config(model_dir)
        adapter = adapter_for(config.model_type)
        device = choose_device(self.s.probe_device)
        dtype = choose_dtype(m.dtype if m.dtype in ("float32", "bfloat16", "float16") else "auto", config, device)
        lm = load_model(model_dir, config, device, dtype, offload=False)
        rule = adapter.fire_rule(type(get_module(lm.layers[0], adapter.act)).__name__)
        if rule != m.fire_rule:   # the sign rule's meaning for this activation
            raise InputError(f"{m.model}: fire rule {rule!r} is not the store's {m.fire_rule!r}")
        return lm, load_tokenizer(model_dir)

    def _test(self, i: int):
        """The handle's fire rule at the i-th recorded layer, as the ingest computed it, with the
        threshold the store recorded for that layer (a calibrated rule is not calibrated again)."""
        from ..ingest.hooks import fire_tests
        from ..grammar import NEURON_THRESHOLDS, parse_fire_rule

        m = self.store.manifest
        rule = parse_fire_rule(self.store.rule)
        rec = {r.name: r for r in m.fire_rules}.get(rule.name)
        thresholds = {rec.name: [rec.thresholds[i]]} if rec is not None and rec.thresholds else {}
        if rule.kind in NEURON_THRESHOLDS:   # per neuron: the store's file, read through its checks
            thresholds = {rule.name: self.store.neuron_thresholds(rule.name)[i:i + 1]}
        (test,) = fire_tests([rule], 1, m.d_ffn, m.block_tokens, thresholds)
        if not test.fixed:   # a damaged record: calibrating on the typed text would show another rule
            raise InputError(f"fire rule {test.name}: the store records no thresholds for it")
        return test

    def run(self, text: str, layer: int) -> ProbeResult:
        if self._why is not None:
            raise InputError(self._why)
        if not text.strip():
            raise InputError("text: expected some text to probe, got none")
        import torch

        from ..ingest.hooks import LayerHooks

        with self._lock:
            if self._loaded is None:
                try:
                    self._loaded = self._load()
                except ActdbError as e:
                    self._why = f"the probe is off: the store's model cannot be loaded here ({e})"
                    raise InputError(self._why) from None
            lm, tok = self._loaded
            m = self.store.manifest
            body = tok(text, add_special_tokens=False)["input_ids"]
            room = self.s.probe_max_tokens - len(m.prefix_tokens) - len(m.suffix_tokens)
            ids = list(m.prefix_tokens) + body[:max(room, 0)] + list(m.suffix_tokens)
            cut = len(body) > room
            i = list(m.layers).index(layer) if layer in m.layers else None
            if i is None:
                raise InputError(f"layer {layer}: not recorded in this store")
            got: dict[str, torch.Tensor] = {}

            def fired(rule: str, layer_index: int, mask: torch.Tensor) -> None:
                got["fired"] = mask                                           # [seq, d_ffn] bool

            with LayerHooks(lm, (layer,), [self._test(i)], fired) as hooks:
                x = torch.tensor([ids], dtype=torch.long, device=lm.device)  # [1, seq]
                hooks.forward(x, torch.ones_like(x), np.array([len(ids)]))
            return ProbeResult(ids, got["fired"].cpu().numpy(), cut, str(lm.device))
