"""One adapter per architecture family: a small table of module paths in the native
`transformers` model (no conversion). Paths are relative to `model.base_model`.

The sign rule reads the output of the activation module, which every family calls exactly once
per layer on the FFN's first projection, the magnitude rules the input of the output projection
(hooks.py, which hooks these paths):
  ReLU (OPT): relu(fc1(x)) > 0;  GELU (GPT-2, BERT, NeoX): act(fc(x)) > 0;
  gated (LLaMA family): act_fn(gate_proj(x)) > 0, never the gate*up product.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError


@dataclass(frozen=True)
class Adapter:
    family: str
    layers: str        # ModuleList of blocks, relative to model.base_model
    act: str           # activation module inside a block; its output > 0 is "fired"
    fc_in: str         # the projection the activation is applied to (fc1 / gate_proj)
    fc_out: str        # FFN output projection: its column n is neuron n's residual update
    final_norm: str | None  # applied before the unembedding (vocabulary projection)
    gated: bool
    decoder: bool
    rule: str
    ffn_key: str = "intermediate_size"  # config attribute holding d_ffn
    fc_up: str | None = None  # gated FFNs: the up projection, whose output multiplies act_fn(gate x)

    def d_ffn(self, config) -> int:
        d = getattr(config, self.ffn_key, None)
        # GPT-2 leaves n_inner unset for the default 4 x n_embd
        return int(d) if d else 4 * int(config.hidden_size)

    def fire_rule(self, act_name: str) -> str:
        return self.rule.format(act=act_name)


_DECODER_GATED = dict(layers="layers", act="mlp.act_fn", fc_in="mlp.gate_proj", fc_out="mlp.down_proj",
                      final_norm="norm", gated=True, decoder=True, fc_up="mlp.up_proj",
                      rule="{act}(gate_proj(x)) > 0 (gate branch of the gated FFN, not gate*up)")

ADAPTERS: dict[str, Adapter] = {
    "opt": Adapter("opt", layers="decoder.layers", act="activation_fn", fc_in="fc1", fc_out="fc2",
                   final_norm="decoder.final_layer_norm", gated=False, decoder=True,
                   rule="{act}(fc1(x)) > 0", ffn_key="ffn_dim"),
    "gpt2": Adapter("gpt2", layers="h", act="mlp.act", fc_in="mlp.c_fc", fc_out="mlp.c_proj",
                    final_norm="ln_f", gated=False, decoder=True, rule="{act}(c_fc(x)) > 0",
                    ffn_key="n_inner"),
    "gpt_neox": Adapter("gpt_neox", layers="layers", act="mlp.act", fc_in="mlp.dense_h_to_4h",
                        fc_out="mlp.dense_4h_to_h", final_norm="final_layer_norm", gated=False,
                        decoder=True, rule="{act}(dense_h_to_4h(x)) > 0"),
    "bert": Adapter("bert", layers="encoder.layer", act="intermediate.intermediate_act_fn",
                    fc_in="intermediate.dense", fc_out="output.dense", final_norm=None,
                    gated=False, decoder=False, rule="{act}(intermediate.dense(x)) > 0"),
    **{mt: Adapter(mt, **_DECODER_GATED) for mt in
       ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo", "olmo2")},
}
# SmolLM checkpoints declare model_type "llama" and use that adapter. Gemma 3's text model
# (Gemma3ForCausalLM) declares "gemma3_text"; the multimodal "gemma3" nests it under language_model.
# Gemma 2 and 3 pass the FFN's output through post_feedforward_layernorm before the residual add, so
# fc_out's column n is neuron n's update up to that norm's per-token, per-dimension scale.


def adapter_for(model_type: str) -> Adapter:
    try:
        return ADAPTERS[model_type]
    except KeyError:
        raise InputError(f"unsupported architecture {model_type!r}: supported are "
                         f"{', '.join(sorted(ADAPTERS))}") from None


def get_module(root, path: str):
    mod = root
    for part in path.split("."):
        mod = getattr(mod, part)
    return mod
