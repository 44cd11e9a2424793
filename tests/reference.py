"""The independent path: a plain transformers forward with hooks on the FFN's input
projection, the activation applied here from the config, batches rebuilt from the
store's token table (not from actdb's batching code)."""
from __future__ import annotations

import numpy as np
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
from transformers.activations import ACT2FN

# family -> (blocks path from the top-level model, input projection inside a block, activation config key)
REF = {
    "opt": ("model.decoder.layers", "fc1", "activation_function"),
    "gpt2": ("transformer.h", "mlp.c_fc", "activation_function"),
    "llama": ("model.layers", "mlp.gate_proj", "hidden_act"),
    "mistral": ("model.layers", "mlp.gate_proj", "hidden_act"),
    "qwen2": ("model.layers", "mlp.gate_proj", "hidden_act"),
    "gemma": ("model.layers", "mlp.gate_proj", "hidden_act"),
    "gpt_neox": ("gpt_neox.layers", "mlp.dense_h_to_4h", "hidden_act"),
    "bert": ("encoder.layer", "intermediate.dense", "hidden_act"),
}


def _get(mod, path):
    for p in path.split("."):
        mod = getattr(mod, p)
    return mod


def reference_masks(model_dir, family: str, store, batch_size: int, dtype=torch.float32) -> dict[int, np.ndarray]:
    """layer -> bool [rows, d_ffn], rows in the store's token order."""
    config = AutoConfig.from_pretrained(model_dir)
    cls = AutoModel if family == "bert" else AutoModelForCausalLM
    model = cls.from_pretrained(model_dir, dtype=dtype).eval()
    blocks_path, fc_path, act_key = REF[family]
    act_name = getattr(config, act_key)
    if family == "gemma":
        act_name = getattr(config, "hidden_activation", None) or act_name
    act = ACT2FN[act_name]
    toks = store.tokens().sort("row")
    seq_ids = toks["seq"].to_numpy()
    token_ids = toks["token_id"].to_numpy()
    bounds = np.flatnonzero(np.diff(seq_ids)) + 1
    seqs = np.split(token_ids, bounds)
    captured: dict[int, list[torch.Tensor]] = {l: [] for l in store.manifest.layers}
    current = {}

    def hook_for(layer):
        def hook(mod, inp, out):
            fired = act(out) > 0
            fired = fired.reshape(-1, fired.shape[-1])[current["valid"]]
            captured[layer].append(fired)
        return hook

    blocks = _get(model, blocks_path)
    for l in store.manifest.layers:
        _get(blocks[l], fc_path).register_forward_hook(hook_for(l))
    for i in range(0, len(seqs), batch_size):
        group = seqs[i:i + batch_size]
        width = max(len(s) for s in group)
        ids = torch.zeros(len(group), width, dtype=torch.long)
        mask = torch.zeros(len(group), width, dtype=torch.long)
        for j, s in enumerate(group):
            ids[j, :len(s)] = torch.from_numpy(s.astype(np.int64))
            mask[j, :len(s)] = 1
        current["valid"] = mask.bool().reshape(-1)
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
    return {l: torch.cat(v).numpy() for l, v in captured.items()}
