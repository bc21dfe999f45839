"""Llama-family checkpoints (model_type llama, mistral, qwen2) <-> DecoderLM.

All three are the same network: RoPE, RMSNorm pre-norm, SwiGLU, GQA. They differ in biases
(Llama: `attention_bias`/`mlp_bias`; Qwen2: q/k/v bias, none on the output) and in sliding-window
attention, which decoderlm does not implement and therefore refuses. decoderlm fuses q/k/v into
`attn.qkv` (rows q, then k, then v) and gate/up into `ffn.gate_up` (rows gate, then up).
"""

from __future__ import annotations

from typing import Any

import torch

from decoderlm.config import ModelConfig
from decoderlm.interop.hf_common import (WeightReader, field, flag, number, positive_int, refuse, require,
                                         rope_theta, set_if)

MODEL_TYPES = ("llama", "mistral", "qwen2")
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
# Defaults of the transformers config classes, for keys a config.json leaves out.
_MISTRAL_DEFAULT_SLIDING_WINDOW = 4096


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    model_type = hf["model_type"]
    require(hf, "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "max_position_embeddings")
    act = field(hf, "hidden_act", default="silu")
    if act not in ("silu", "swish"):
        raise refuse(f"hidden_act {act!r} in the gated feed-forward (only silu, i.e. SwiGLU, is implemented)")
    max_len = positive_int(hf, "max_position_embeddings")
    _refuse_sliding_window(hf, model_type, max_len)
    d_model, n_head = positive_int(hf, "hidden_size"), positive_int(hf, "num_attention_heads")
    if model_type == "qwen2":
        qkv_bias, out_bias, mlp_bias = True, False, False
    elif model_type == "mistral":
        qkv_bias = out_bias = mlp_bias = False
    else:
        qkv_bias = out_bias = flag(hf, "attention_bias", False)
        mlp_bias = flag(hf, "mlp_bias", False)
    return ModelConfig(
        vocab_size=positive_int(hf, "vocab_size"),
        max_seq_len=max_len,
        d_model=d_model,
        n_layer=positive_int(hf, "num_hidden_layers"),
        n_head=n_head,
        n_kv_head=positive_int(hf, "num_key_value_heads", default=n_head),
        head_dim=positive_int(hf, "head_dim", default=d_model // n_head),
        d_ff=positive_int(hf, "intermediate_size"),
        position="rope",
        rope_theta=rope_theta(hf),
        qkv_bias=qkv_bias,
        attn_out_bias=out_bias,
        ffn="swiglu",
        mlp_bias=mlp_bias,
        norm="rmsnorm",
        norm_eps=number(hf, "rms_norm_eps", default=1e-6),
        pre_norm=True,
        final_norm=True,
        tie_embeddings=flag(hf, "tie_word_embeddings", False),
        lm_head_bias=False,
        dropout=0.0,
        attn_dropout=number(hf, "attention_dropout", default=0.0),
        init_std=number(hf, "initializer_range", default=0.02),
    )


def _refuse_sliding_window(hf: dict[str, Any], model_type: str, max_len: int) -> None:
    """Sliding-window attention changes the math once a sequence outgrows the window."""
    if model_type == "qwen2":
        if flag(hf, "use_sliding_window", False):
            raise refuse(f"sliding-window attention (use_sliding_window true, sliding_window {hf.get('sliding_window')})")
        return
    window = hf.get("sliding_window", _MISTRAL_DEFAULT_SLIDING_WINDOW if model_type == "mistral" else None)
    if window is not None and window < max_len:  # a window as long as the context never slides
        raise refuse(f"sliding-window attention (sliding_window {window} < max_position_embeddings {max_len})")


def state_from_hf(hf_state: dict[str, torch.Tensor], config: ModelConfig, model_type: str) -> dict[str, torch.Tensor]:
    """Hugging Face names and layout -> DecoderLM's state dict."""
    w = WeightReader(hf_state, "model.", model_type)
    state = {"tok_emb.weight": w.take("embed_tokens.weight"), "final_norm.weight": w.take("norm.weight")}
    for i in range(config.n_layer):
        hf, ours = f"layers.{i}.", f"blocks.{i}."
        att, mlp = hf + "self_attn.", hf + "mlp."
        state[ours + "attn.qkv.weight"] = torch.cat([w.take(att + f"{p}_proj.weight") for p in "qkv"])
        if config.qkv_bias:
            state[ours + "attn.qkv.bias"] = torch.cat([w.take(att + f"{p}_proj.bias") for p in "qkv"])
        state[ours + "attn.proj.weight"] = w.take(att + "o_proj.weight")
        set_if(state, ours + "attn.proj.bias", w.take_if(config.attn_out_bias, att + "o_proj.bias"))
        state[ours + "ffn.gate_up.weight"] = torch.cat([w.take(mlp + "gate_proj.weight"), w.take(mlp + "up_proj.weight")])
        if config.mlp_bias:
            state[ours + "ffn.gate_up.bias"] = torch.cat([w.take(mlp + "gate_proj.bias"), w.take(mlp + "up_proj.bias")])
        state[ours + "ffn.down.weight"] = w.take(mlp + "down_proj.weight")
        set_if(state, ours + "ffn.down.bias", w.take_if(config.mlp_bias, mlp + "down_proj.bias"))
        state[ours + "norm1.weight"] = w.take(hf + "input_layernorm.weight")
        state[ours + "norm2.weight"] = w.take(hf + "post_attention_layernorm.weight")
    if config.tie_embeddings:
        w.discard("lm_head.weight", prefixed=False)  # transformers ties it to the embedding on load
    else:
        state["lm_head.weight"] = w.take("lm_head.weight", prefixed=False)
    # Older checkpoints stored RoPE's inverse frequencies; we compute them from rope_theta.
    w.finish(ignorable=lambda key: key.endswith("rotary_emb.inv_freq"))
    return state


# -- export -----------------------------------------------------------------------------------------
def export_model_type(config: ModelConfig) -> str | None:
    """'llama' or 'qwen2' if transformers can represent `config` this way, else None."""
    if not (config.position == "rope" and config.norm == "rmsnorm" and config.ffn == "swiglu"):
        return None
    if config.qkv_bias == config.attn_out_bias:
        return "llama"
    if config.qkv_bias and not config.attn_out_bias and not config.mlp_bias:
        return "qwen2"
    return None


def config_to_hf(config: ModelConfig, model_type: str, dtype: str) -> dict[str, Any]:
    hf = {
        "architectures": [_ARCHITECTURES[model_type]],
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.d_ff,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        # Both rope layouts: transformers 5 reads rope_parameters, transformers 4 rope_theta.
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "attention_dropout": config.attn_dropout,
        "initializer_range": config.init_std,
        "tie_word_embeddings": config.tie_embeddings,
        "use_cache": True,
        "dtype": dtype,
        "bos_token_id": None,  # the tokenizer's business; transformers would default to 1 and 2
        "eos_token_id": None,
    }
    if model_type == "llama":
        hf.update(attention_bias=config.qkv_bias, mlp_bias=config.mlp_bias)
    else:
        hf.update(use_sliding_window=False, sliding_window=None, max_window_layers=config.n_layer)
    return hf


def state_to_hf(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """DecoderLM's state dict (tied head already dropped) -> Hugging Face names and layout."""
    q_dim, kv_dim = config.n_head * config.head_dim, config.n_kv_head * config.head_dim
    out = {"model.embed_tokens.weight": state["tok_emb.weight"], "model.norm.weight": state["final_norm.weight"]}
    for i in range(config.n_layer):
        ours, att, mlp = f"blocks.{i}.", f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
        for kind in ("weight", "bias"):
            if f"{ours}attn.qkv.{kind}" in state:
                for p, t in zip("qkv", state[f"{ours}attn.qkv.{kind}"].split([q_dim, kv_dim, kv_dim])):
                    out[f"{att}{p}_proj.{kind}"] = t
            set_if(out, f"{att}o_proj.{kind}", state.get(f"{ours}attn.proj.{kind}"))
            if f"{ours}ffn.gate_up.{kind}" in state:
                gate, up = state[f"{ours}ffn.gate_up.{kind}"].chunk(2)
                out[f"{mlp}gate_proj.{kind}"], out[f"{mlp}up_proj.{kind}"] = gate, up
            set_if(out, f"{mlp}down_proj.{kind}", state.get(f"{ours}ffn.down.{kind}"))
        out[f"model.layers.{i}.input_layernorm.weight"] = state[ours + "norm1.weight"]
        out[f"model.layers.{i}.post_attention_layernorm.weight"] = state[ours + "norm2.weight"]
    if not config.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    return out
