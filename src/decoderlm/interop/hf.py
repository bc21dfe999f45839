"""Hugging Face checkpoint directories: read into DecoderLM weights, and write from them.

We read and write the files ourselves (config.json + safetensors), so `transformers` is never
imported by the product; the tests use it to prove the two agree. Everything outside what the
model implements is refused by name rather than loaded into a network that computes something else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from decoderlm.checkpoint_io import CONFIG_NAME, WEIGHTS_NAME, read_weights
from decoderlm.config import ModelConfig
from decoderlm.errors import DecoderLMError
from decoderlm.fileio import bytes_writer, commit_files, json_writer, safetensors_writer
from decoderlm.interop import hf_gpt2, hf_llama
from decoderlm.interop.hf_common import refuse, refuse_common

_FAMILIES = {model_type: family for family in (hf_llama, hf_gpt2) for model_type in family.MODEL_TYPES}
SUPPORTED_MODEL_TYPES = tuple(_FAMILIES)


def is_hf_config(config_json: dict[str, Any]) -> bool:
    """A Hugging Face config.json names its `model_type`; a decoderlm one has a `model` section."""
    return "model_type" in config_json


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """The ModelConfig equivalent to a Hugging Face config.json, or a one-line refusal."""
    model_type = hf.get("model_type")
    if model_type not in _FAMILIES:
        raise refuse(f"model_type {model_type!r} (supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    refuse_common(hf)
    return _FAMILIES[model_type].config_from_hf(hf)


def read_hf_checkpoint(directory: str | Path, hf: dict[str, Any]) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(config, DecoderLM state dict) from a Hugging Face directory whose config.json is `hf`."""
    config = config_from_hf(hf)
    hf_state = read_weights(directory)
    return config, _FAMILIES[hf["model_type"]].state_from_hf(hf_state, config, hf["model_type"])


# -- export -----------------------------------------------------------------------------------------
def _export_obstacle(config: ModelConfig) -> str | None:
    """Everything in `config` that no transformers architecture we write (Llama, Qwen2, GPT-2) can
    express, as one phrase, or None."""
    obstacles = [
        (config.ffn == "moe", "a mixture-of-experts feed-forward"),
        (config.ffn == "none", "blocks without a feed-forward layer"),
        (config.position == "sinusoidal", "sinusoidal positions"),
        (config.position == "none", "a model without position information"),
        (not config.pre_norm, "post-norm blocks"),
        (config.norm == "none", "blocks without normalisation"),
        (not config.final_norm, "no final norm"),
        (not config.attn_out_proj, "attention without an output projection"),
        (config.lm_head_bias, "a bias on the output head"),
    ]
    found = [what for bad, what in obstacles if bad]
    return ", ".join(found) if found else None


def hf_family(config: ModelConfig):
    """(converter module, model_type) for exporting `config`, or a one-line refusal."""
    obstacle = _export_obstacle(config)
    if obstacle is None:
        for family in (hf_llama, hf_gpt2):
            model_type = family.export_model_type(config)
            if model_type:
                return family, model_type
        obstacle = (f"the combination position={config.position}, norm={config.norm}, ffn={config.ffn}, "
                    f"activation={config.activation}, qkv_bias={config.qkv_bias}, attn_out_bias={config.attn_out_bias}, "
                    f"mlp_bias={config.mlp_bias} matches neither Llama, Qwen2 nor GPT-2")
    raise DecoderLMError(f"cannot export to Hugging Face format: transformers has no model with {obstacle}; "
                         f"save with format='native' instead")


def write_hf_checkpoint(state: dict[str, torch.Tensor], config: ModelConfig, out_dir: str | Path,
                        extra_files: dict[str, bytes] | None = None,
                        token_ids: dict[str, int] | None = None) -> str:
    """Write config.json + model.safetensors that transformers' AutoModelForCausalLM loads.
    `state` is DecoderLM's state dict with a tied head stored once; `extra_files` (name -> bytes)
    go beside it; `token_ids` (eos_token_id, pad_token_id) into config.json. Returns the model_type."""
    family, model_type = hf_family(config)
    dtype = str(state["tok_emb.weight"].dtype).removeprefix("torch.")
    # safetensors wants every tensor contiguous and owning its memory (the q/k/v splits are views).
    tensors = {name: t.detach().clone(memory_format=torch.contiguous_format)
               for name, t in family.state_to_hf(state, config).items()}
    out = Path(out_dir)
    writers = [(out / name, bytes_writer(data)) for name, data in (extra_files or {}).items()]
    hf_config = family.config_to_hf(config, model_type, dtype)
    hf_config.update({k: v for k, v in (token_ids or {}).items() if 0 <= v < config.vocab_size})
    writers += [(out / CONFIG_NAME, json_writer(hf_config)),
                (out / WEIGHTS_NAME, safetensors_writer(tensors, metadata={"format": "pt"}))]
    commit_files(writers)
    return model_type
