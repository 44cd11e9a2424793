"""Checks the demo's dequantized Gemma-3-270M against a second forward written here from the GGUF's
own tensors, following llama.cpp's Gemma 3 graph rather than transformers' (the GGUF stores the
norm weights with the 1 of Gemma's RMSNorm already added; embeddings x sqrt(d_model); q and k
RMSNorms; NEOX rotary with base 10,000 on the sliding layers and the file's 1e6 on every sixth;
q scaled by 1/sqrt(head_dim); GELU(tanh) gate x up; post-attention and post-FFN norms; tied
output). Prints the largest logit difference and the top-1 agreement per text.

    python ingest/check_gemma3.py            # after the demo made .cache/models/gemma-3-270m
"""
from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from demo import MODELS, ROOT  # noqa: E402
from models_demo import GEMMA3_GGUF, assemble_gemma3  # noqa: E402

TEXTS = ("The capital of France is", "The chemical symbol for gold is", "One, two, three, four,",
         'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n    if n < 2:\n        return n\n',
         "Permission is hereby granted, free of charge, to any person obtaining a copy of this software")


def gguf_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from gguf import GGUFReader
    from gguf.quants import dequantize

    r = GGUFReader(path)
    meta = {k: f.contents() for k, f in r.fields.items() if k.startswith("gemma3.")}
    # numpy's shape is ggml's ne reversed: [out, in] for a projection, [vocab, d] for the embeddings
    return {t.name: torch.from_numpy(np.ascontiguousarray(dequantize(t.data, t.tensor_type), dtype=np.float32))
            .reshape([int(x) for x in reversed(t.shape.tolist())]) for t in r.tensors}, meta


def forward(w: dict[str, torch.Tensor], meta: dict, ids: list[int]) -> torch.Tensor:
    """logits [T, vocab] of one sequence."""
    d, n_layers = meta["gemma3.embedding_length"], meta["gemma3.block_count"]
    heads, kv, hd = meta["gemma3.attention.head_count"], meta["gemma3.attention.head_count_kv"], meta["gemma3.attention.key_length"]
    eps, window, theta = meta["gemma3.attention.layer_norm_rms_epsilon"], meta["gemma3.attention.sliding_window"], meta["gemma3.rope.freq_base"]
    T = len(ids)
    pos = torch.arange(T)

    def rms(x, g):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g

    def rope(x, base):                                    # [heads, T, hd], NEOX: the two halves rotate
        inv = base ** (-torch.arange(0, hd // 2, dtype=torch.float64) * 2 / hd)
        ang = pos[:, None].double() * inv[None]
        c, s = ang.cos().float(), ang.sin().float()
        x1, x2 = x[..., :hd // 2], x[..., hd // 2:]
        return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], -1)

    x = w["token_embd.weight"][ids] * math.sqrt(d)
    for layer in range(n_layers):
        p = f"blk.{layer}."
        sliding = (layer + 1) % 6 != 0
        h = rms(x, w[p + "attn_norm.weight"])
        q = rms((h @ w[p + "attn_q.weight"].T).view(T, heads, hd).transpose(0, 1), w[p + "attn_q_norm.weight"])
        k = rms((h @ w[p + "attn_k.weight"].T).view(T, kv, hd).transpose(0, 1), w[p + "attn_k_norm.weight"])
        v = (h @ w[p + "attn_v.weight"].T).view(T, kv, hd).transpose(0, 1)
        base = 10000.0 if sliding else theta
        scores = (rope(q, base) / math.sqrt(hd)) @ rope(k, base).transpose(1, 2)   # [heads, T, T]
        hidden = (pos[None] > pos[:, None]) | (sliding & (pos[:, None] - pos[None] >= window))
        att = scores.masked_fill(hidden, float("-inf")).softmax(-1) @ v
        x = x + rms(att.transpose(0, 1).reshape(T, heads * hd) @ w[p + "attn_output.weight"].T,
                    w[p + "post_attention_norm.weight"])
        h = rms(x, w[p + "ffn_norm.weight"])
        g = torch.nn.functional.gelu(h @ w[p + "ffn_gate.weight"].T, approximate="tanh") * (h @ w[p + "ffn_up.weight"].T)
        x = x + rms(g @ w[p + "ffn_down.weight"].T, w[p + "post_ffw_norm.weight"])
    return rms(x, w["output_norm.weight"]) @ w["token_embd.weight"].T


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = ROOT / ".cache" / "models" / MODELS["gemma3"].folder
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with tempfile.TemporaryDirectory() as tmp:
        w, meta = gguf_weights(assemble_gemma3(Path(tmp) / GEMMA3_GGUF))
    with torch.inference_mode():
        for text in TEXTS:
            ids = tok(text).input_ids
            ref = forward(w, meta, ids)
            ours = model(input_ids=torch.tensor([ids])).logits[0]
            top = tok.decode([int(ours[-1].argmax())])
            print(f"{len(ids):3d} tokens: max |logit difference| {(ref - ours).abs().max().item():.1e} "
                  f"(logits up to {ref.abs().max().item():.0f}), top-1 agreement "
                  f"{(ref.argmax(-1) == ours.argmax(-1)).float().mean().item():.2f}; next {top!r} after {text[-30:]!r}")


if __name__ == "__main__":
    main()
