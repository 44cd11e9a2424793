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
    "gemma3": ("model.layers", "mlp.gate_proj", "hidden_activation"),
    "gpt_neox": ("gpt_neox.layers", "mlp.dense_h_to_4h", "hidden_act"),
    "bert": ("encoder.layer", "intermediate.dense", "hidden_act"),
}


def _get(mod, path):
    for p in path.split("."):
        mod = getattr(mod, p)
    return mod


def _model(model_dir, family: str, dtype):
    """(model, blocks, activation) of a saved model, the activation taken from its config."""
    config = AutoConfig.from_pretrained(model_dir)
    cls = AutoModel if family == "bert" else AutoModelForCausalLM
    model = cls.from_pretrained(model_dir, dtype=dtype).eval()
    blocks_path, _, act_key = REF[family]
    act_name = getattr(config, act_key)
    if family == "gemma":
        act_name = getattr(config, "hidden_activation", None) or act_name
    return model, _get(model, blocks_path), ACT2FN[act_name]


def _forward_store_batches(model, store, batch_size: int, current: dict) -> None:
    """Run the store's sequences (from its token table) in batches of batch_size, right-padded;
    current["valid"]: the batch's non-padding positions, [batch*seq] bool, for the hooks."""
    toks = store.tokens().sort("row")
    seqs = np.split(toks["token_id"].to_numpy(), np.flatnonzero(np.diff(toks["seq"].to_numpy())) + 1)
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


def reference_masks(model_dir, family: str, store, batch_size: int, dtype=torch.float32) -> dict[int, np.ndarray]:
    """layer -> bool [rows, d_ffn], rows in the store's token order."""
    model, blocks, act = _model(model_dir, family, dtype)
    captured: dict[int, list[torch.Tensor]] = {l: [] for l in store.manifest.layers}
    current = {}

    def hook_for(layer):
        def hook(mod, inp, out):
            fired = act(out) > 0
            fired = fired.reshape(-1, fired.shape[-1])[current["valid"]]
            captured[layer].append(fired)
        return hook

    for l in store.manifest.layers:
        _get(blocks[l], REF[family][1]).register_forward_hook(hook_for(l))
    _forward_store_batches(model, store, batch_size, current)
    return {l: torch.cat(v).numpy() for l, v in captured.items()}


# family -> (the FFN's input projection, its up projection for gated FFNs, or None)
HIDDEN = {f: (REF[f][1], "mlp.up_proj" if REF[f][1] == "mlp.gate_proj" else None) for f in REF}


def reference_hidden(model_dir, family: str, store, batch_size: int, dtype=torch.float32) -> dict[int, np.ndarray]:
    """layer -> h float32 [rows, d_ffn], the value the FFN's output projection reads, computed here
    from hooked projections: act(fc_in x), or act(gate x) * up x for gated FFNs (docs/definitions.md)."""
    return _hooked(model_dir, family, store, batch_size, dtype,
                   lambda g, up: (g if up is None else g * up).float().numpy())


def reference_signs(model_dir, family: str, store, batch_size: int, dtype=torch.float32) -> dict[int, np.ndarray]:
    """layer -> int8 [rows, d_ffn, 2]: the signs (-1, 0, 1) of act(gate x) and of up x, a gated FFN's."""
    assert HIDDEN[family][1] is not None, f"{family}: not a gated FFN"
    return _hooked(model_dir, family, store, batch_size, dtype,
                   lambda g, up: np.stack([np.sign(g.float().numpy()), np.sign(up.float().numpy())], -1).astype(np.int8))


def _hooked(model_dir, family: str, store, batch_size: int, dtype, value) -> dict[int, np.ndarray]:
    """layer -> value(act(fc_in x), up x or None) [rows, ...] over the store's rows, from hooked projections."""
    model, blocks, act = _model(model_dir, family, dtype)
    fc_path, up_path = HIDDEN[family]
    out: dict[int, list[np.ndarray]] = {l: [] for l in store.manifest.layers}
    seen: dict[tuple[int, str], torch.Tensor] = {}
    current = {}

    def keep(layer, which):
        def hook(mod, inp, o):
            seen[(layer, which)] = o.reshape(-1, o.shape[-1])[current["valid"]]
            if which == "fc" and up_path is None or which == "up":
                out[layer].append(value(act(seen[(layer, "fc")]), seen[(layer, "up")] if up_path else None))
        return hook

    for l in store.manifest.layers:
        _get(blocks[l], fc_path).register_forward_hook(keep(l, "fc"))
        if up_path:
            _get(blocks[l], up_path).register_forward_hook(keep(l, "up"))
    _forward_store_batches(model, store, batch_size, current)
    return {l: np.concatenate(v) for l, v in out.items()}


def reference_rule_masks(hidden: dict[int, np.ndarray], rule: str, block_tokens: int,
                         signs: dict[int, np.ndarray] | None = None) -> dict[int, np.ndarray]:
    """A rule beyond the sign computed in numpy: from h, abs>T, top:Q with each layer's threshold
    np.quantile(|h| of the first block, Q), ntop:Q with each neuron's (axis=0); from the signs of a
    gated FFN (reference_signs), glu:SS."""
    if rule.startswith("glu:"):
        want = [1 if c == "+" else -1 for c in rule[4:]]
        return {l: (s[..., 0] == want[0]) & (s[..., 1] == want[1]) for l, s in signs.items()}
    out = {}
    for l, h in hidden.items():
        a = np.abs(h.astype(np.float64))
        if rule.startswith("abs>"):
            t = float(rule[4:])
        elif rule.startswith("ntop:"):
            t = np.quantile(np.abs(h[:block_tokens]).astype(np.float32), float(rule[5:]), axis=0).astype(np.float64)
        else:
            t = float(np.quantile(np.abs(h[:block_tokens]).astype(np.float32), float(rule[4:])))
        out[l] = a > t
    return out
