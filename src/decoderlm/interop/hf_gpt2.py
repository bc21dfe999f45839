"""GPT-2 checkpoints (model_type gpt2) <-> DecoderLM.

GPT-2 stores its projections as `Conv1D` weights shaped (in, out), the transpose of `nn.Linear`;
`c_attn` already holds q, k, v in that order, like our fused `attn.qkv`. The head is tied to the
token embedding unless the config says otherwise.
"""

from __future__ import annotations

from typing import Any

import torch

from decoderlm.config import ModelConfig
from decoderlm.interop.hf_common import WeightReader, flag, number, positive_int, refuse, require

MODEL_TYPES = ("gpt2",)
_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu",
                "silu": "silu", "swish": "silu"}
_EXPORT_ACTIVATIONS = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}
# (GPT-2 name, our name, stored as Conv1D) for the parts of one block; each has a weight and a bias.
_LAYER_PARTS = [("ln_1", "norm1", False), ("attn.c_attn", "attn.qkv", True), ("attn.c_proj", "attn.proj", True),
                ("ln_2", "norm2", False), ("mlp.c_fc", "ffn.up", True), ("mlp.c_proj", "ffn.down", True)]


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    require(hf, "vocab_size", ("n_embd", "hidden_size"), ("n_layer", "num_hidden_layers"),
            ("n_head", "num_attention_heads"), ("n_positions", "max_position_embeddings"))
    act = hf.get("activation_function", "gelu_new")
    if act not in _ACTIVATIONS:
        raise refuse(f"activation_function {act!r} (supported: {', '.join(_ACTIVATIONS)})")
    if not flag(hf, "scale_attn_weights", True):
        raise refuse("scale_attn_weights false (attention without 1/sqrt(head_dim) scaling)")
    if flag(hf, "scale_attn_by_inverse_layer_idx", False):
        raise refuse("scale_attn_by_inverse_layer_idx true (per-layer attention scaling)")
    # reorder_and_upcast_attn only computes attention in float32: same math, nothing to refuse.
    d_model, n_head = positive_int(hf, "n_embd", "hidden_size"), positive_int(hf, "n_head", "num_attention_heads")
    if d_model % n_head:
        raise refuse(f"n_embd {d_model} not divisible by n_head {n_head}")
    return ModelConfig(
        vocab_size=positive_int(hf, "vocab_size"),
        max_seq_len=positive_int(hf, "n_positions", "max_position_embeddings"),
        d_model=d_model,
        n_layer=positive_int(hf, "n_layer", "num_hidden_layers"),
        n_head=n_head,
        n_kv_head=n_head,
        head_dim=d_model // n_head,
        d_ff=positive_int(hf, "n_inner", default=4 * d_model),
        position="learned",
        qkv_bias=True,
        attn_out_bias=True,
        ffn="mlp",
        activation=_ACTIVATIONS[act],
        mlp_bias=True,
        norm="layernorm",
        norm_eps=number(hf, "layer_norm_epsilon", default=1e-5),
        norm_bias=True,
        pre_norm=True,
        final_norm=True,
        tie_embeddings=flag(hf, "tie_word_embeddings", True),
        lm_head_bias=False,
        dropout=number(hf, "resid_pdrop", default=0.1),
        attn_dropout=number(hf, "attn_pdrop", default=0.1),
        init_std=number(hf, "initializer_range", default=0.02),
    )


def state_from_hf(hf_state: dict[str, torch.Tensor], config: ModelConfig, model_type: str) -> dict[str, torch.Tensor]:
    w = WeightReader(hf_state, "transformer.", model_type)
    state = {
        "tok_emb.weight": w.take("wte.weight"),
        "pos_emb.weight": w.take("wpe.weight"),
        "final_norm.weight": w.take("ln_f.weight"),
        "final_norm.bias": w.take("ln_f.bias"),
    }
    for i in range(config.n_layer):
        for theirs, ours, conv1d in _LAYER_PARTS:
            weight = w.take(f"h.{i}.{theirs}.weight")
            state[f"blocks.{i}.{ours}.weight"] = weight.t().contiguous() if conv1d else weight  # Conv1D: (in, out)
            state[f"blocks.{i}.{ours}.bias"] = w.take(f"h.{i}.{theirs}.bias")
    if config.tie_embeddings:
        w.discard("lm_head.weight", prefixed=False)
    else:
        state["lm_head.weight"] = w.take("lm_head.weight", prefixed=False)
    # Old checkpoints carry the causal-mask buffers attn.bias / attn.masked_bias: not weights.
    w.finish(ignorable=lambda key: key.endswith((".attn.bias", ".attn.masked_bias")))
    return state


# -- export -----------------------------------------------------------------------------------------
def export_model_type(config: ModelConfig) -> str | None:
    ok = (config.position == "learned" and config.norm == "layernorm" and config.norm_bias and config.ffn == "mlp"
          and config.activation in _EXPORT_ACTIVATIONS and config.mlp_bias and config.qkv_bias
          and config.attn_out_bias and config.n_kv_head == config.n_head
          and config.n_head * config.head_dim == config.d_model)
    return "gpt2" if ok else None


def config_to_hf(config: ModelConfig, model_type: str, dtype: str) -> dict[str, Any]:
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.max_seq_len,
        "n_embd": config.d_model,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": config.d_ff,
        "activation_function": _EXPORT_ACTIVATIONS[config.activation],
        "layer_norm_epsilon": config.norm_eps,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.attn_dropout,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "initializer_range": config.init_std,
        "tie_word_embeddings": config.tie_embeddings,
        "use_cache": True,
        "dtype": dtype,
        # Token ids belong to the tokenizer, which the weights do not know; transformers' defaults
        # (50256) would point outside a smaller vocabulary.
        "bos_token_id": None,
        "eos_token_id": None,
    }


def state_to_hf(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    out = {
        "transformer.wte.weight": state["tok_emb.weight"],
        "transformer.wpe.weight": state["pos_emb.weight"],
        "transformer.ln_f.weight": state["final_norm.weight"],
        "transformer.ln_f.bias": state["final_norm.bias"],
    }
    for i in range(config.n_layer):
        for theirs, ours, conv1d in _LAYER_PARTS:
            weight = state[f"blocks.{i}.{ours}.weight"]
            out[f"transformer.h.{i}.{theirs}.weight"] = weight.t() if conv1d else weight
            out[f"transformer.h.{i}.{theirs}.bias"] = state[f"blocks.{i}.{ours}.bias"]
    if not config.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    return out
