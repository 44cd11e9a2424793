"""Tiny seeded models and corpora for tests: built here, nothing downloaded."""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch

WORDS = ("the of and to in is was for on that with as by at from his her it an were are which this be "
         "or has had not but first one their its new after who they have two been also other all more "
         "time year city world war school state team house game music film river water light night day "
         "code data model neuron layer token paper law court song book north south east west red blue "
         "green black white small large old young high low long short good great early late public").split()
DOMAINS = ("code", "prose", "legal")

# family -> (model_type, config kwargs); sizes are tiny but keep each family's real structure
FAMILIES: dict[str, tuple[str, dict]] = {
    "opt": ("opt", dict(hidden_size=32, num_hidden_layers=3, ffn_dim=48, num_attention_heads=4,
                        max_position_embeddings=128, word_embed_proj_dim=32)),
    "gpt2": ("gpt2", dict(n_embd=32, n_layer=3, n_head=4, n_positions=128)),
    "llama": ("llama", dict(hidden_size=32, num_hidden_layers=3, intermediate_size=44, num_attention_heads=4,
                            num_key_value_heads=2, max_position_embeddings=128)),
    "mistral": ("mistral", dict(hidden_size=32, num_hidden_layers=2, intermediate_size=40, num_attention_heads=4,
                                num_key_value_heads=2, max_position_embeddings=128)),
    "qwen2": ("qwen2", dict(hidden_size=32, num_hidden_layers=2, intermediate_size=40, num_attention_heads=4,
                            num_key_value_heads=2, max_position_embeddings=128)),
    "gemma": ("gemma", dict(hidden_size=32, num_hidden_layers=2, intermediate_size=40, num_attention_heads=4,
                            num_key_value_heads=1, head_dim=8, max_position_embeddings=128)),
    # a window shorter than the tests' sequences, so the sliding layer masks differently from the full one
    "gemma3": ("gemma3_text", dict(hidden_size=32, num_hidden_layers=2, intermediate_size=40, num_attention_heads=4,
                                   num_key_value_heads=1, head_dim=8, query_pre_attn_scalar=8, sliding_window=6,
                                   layer_types=["sliding_attention", "full_attention"],
                                   max_position_embeddings=128)),
    "gpt_neox": ("gpt_neox", dict(hidden_size=32, num_hidden_layers=3, intermediate_size=48,
                                  num_attention_heads=4, max_position_embeddings=128)),
    "bert": ("bert", dict(hidden_size=32, num_hidden_layers=2, intermediate_size=40, num_attention_heads=4,
                          max_position_embeddings=128)),
}


def make_tokenizer(path: Path, family: str):
    """A word-level tokenizer; BERT gets [CLS] … [SEP], OPT/LLaMA-like get a BOS prefix, GPT-2 none."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    if family == "qwen2":  # AutoTokenizer always picks Qwen2Tokenizer for qwen2: give it a byte-level vocab
        from tokenizers.pre_tokenizers import ByteLevel
        from transformers import Qwen2Tokenizer

        vocab = {t: i for i, t in enumerate(specials + sorted(ByteLevel.alphabet()))}
        qtok = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                              pad_token="<pad>")
        qtok.save_pretrained(path)
        return qtok
    vocab = {t: i for i, t in enumerate(specials + list(WORDS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if family == "bert":
        tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 2), ("</s>", 3)])
    elif family != "gpt2":
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>")
    if family == "bert":
        fast.cls_token, fast.sep_token = "<s>", "</s>"
    fast.save_pretrained(path)
    return fast


def make_model(path: Path, family: str, seed: int = 0, vocab_pad: int = 8, **sizes):
    """Save a seeded random model of `family` with its tokenizer to `path`; returns the model.
    sizes: config values in place of the family's (num_hidden_layers=4, ffn_dim=64 ...)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    path = Path(path)
    tok = make_tokenizer(path, family)
    model_type, kw = FAMILIES[family]
    kw = {**kw, **sizes}
    config = AutoConfig.for_model(model_type, vocab_size=len(tok) + vocab_pad, pad_token_id=0,
                                  bos_token_id=2, eos_token_id=3, **kw)
    torch.manual_seed(seed)
    cls = AutoModel if family == "bert" else AutoModelForCausalLM
    model = cls.from_config(config).eval()
    with torch.no_grad():  # random init is near-symmetric; shift biases so firing rates vary by neuron
        for name, p in model.named_parameters():
            if p.ndim == 1 and ("fc1" in name or "c_fc" in name or "h_to_4h" in name or "intermediate" in name):
                p.add_(torch.randn_like(p) * 0.5)
    model.save_pretrained(path)
    return model


def make_corpus(path: Path, n_docs: int = 40, seed: int = 0, min_words: int = 3, max_words: int = 60) -> Path:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n_docs):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words)))
            f.write(json.dumps({"text": text, "domain": DOMAINS[i % len(DOMAINS)], "id": f"d{i}"}) + "\n")
    return Path(path)


def planted_model(src, dst, dim=5, value=3000.0):
    """Copy a tiny LLaMA and plant a huge value in one dimension of the BOS embedding."""
    import shutil

    from transformers import AutoModelForCausalLM

    shutil.copytree(src, dst)
    model = AutoModelForCausalLM.from_pretrained(dst)
    with torch.no_grad():
        model.get_input_embeddings().weight[2, dim] = value   # id 2 is <s>, the BOS token
    model.save_pretrained(dst)
    return dst
