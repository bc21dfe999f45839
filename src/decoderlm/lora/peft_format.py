"""PEFT's adapter directories (adapter_config.json + adapter_model.safetensors) <-> decoderlm adapters.

Only Llama-family bases (llama, mistral, qwen2): their Hugging Face layout names each projection
(model.layers.N.self_attn.q_proj, ..., mlp.down_proj, lm_head), and decoderlm's per-projection
adapters inside the fused q/k/v and gate/up matrices map one to one onto PEFT's. The files are
read and written here (safetensors + JSON), so the product never imports peft; the tests load our
exports in peft and peft's saves here, and compare logits.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from decoderlm.checkpoint_io import read_json, read_safetensors
from decoderlm.fileio import commit_files, json_writer, safetensors_writer
from decoderlm.errors import DecoderLMError
from decoderlm.lora.apply import adapter_shapes, apply_lora, lora_config_of, lora_layers
from decoderlm.lora.config import HEAD, TARGETS, LoRAConfig
from decoderlm.lora.weights import check_adapter_state, load_lora_state_dict, lora_state_dict

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
_MODULES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
            "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
_TARGET_OF = {module.split(".")[1]: target for target, module in _MODULES.items()} | {"lm_head": HEAD}
_KEY = re.compile(r"base_model\.model\.(?:model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)|(lm_head))"
                  r"\.lora_([AB])\.weight")
# PEFT writes the head's own weight beside its adapter when the head is targeted (save_embedding_layers).
_BASE_COPY = re.compile(r"base_model\.model\.(?:lm_head|model\.embed_tokens)\.base_layer\.weight")


def _peft_module(site_name: str, target: str) -> str:
    """('blocks.3.attn.qkv', 'k') -> 'model.layers.3.self_attn.k_proj'; the head -> 'lm_head'."""
    if target == HEAD:
        return "lm_head"
    return f"model.layers.{int(site_name.split('.')[1])}.{_MODULES[target]}"


def _peft_key(our_key: str) -> str:
    """'blocks.3.attn.qkv.adapters.k.A' -> 'base_model.model.model.layers.3.self_attn.k_proj.lora_A.weight'."""
    site_name, adapter = our_key.split(".adapters.")
    target, which = adapter.split(".")
    return f"base_model.model.{_peft_module(site_name, target)}.lora_{which}.weight"


def _require_llama_family(model: nn.Module, doing: str) -> None:
    from decoderlm.interop import hf_llama

    config = model.config
    if hf_llama.export_model_type(config) is None or not config.attn_out_proj or config.ffn != "swiglu":
        raise DecoderLMError(f"cannot {doing}: PEFT adapters are supported for Llama-family models (Llama, "
                             f"Mistral, Qwen2: rotary positions, RMSNorm, SwiGLU), and this model has "
                             f"position={config.position}, norm={config.norm}, ffn={config.ffn}")


# -- export -----------------------------------------------------------------------------------------
def export_peft_adapters(model: nn.Module, out_dir: str | Path, base_name_or_path: str | None = None) -> Path:
    """Write the model's adapters as a PEFT LoRA directory, loadable with
    `peft.PeftModel.from_pretrained(base, out_dir)` over the Hugging Face export of the base
    (`LanguageModel.save(dir, format="hf")`)."""
    config = lora_config_of(model)
    if config is None:
        raise DecoderLMError("the model has no LoRA adapters to export")
    _require_llama_family(model, "export PEFT adapters")
    tensors = {_peft_key(name): t.clone(memory_format=torch.contiguous_format)
               for name, t in lora_state_dict(model).items()}
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DecoderLMError(f"{out} exists and is not a directory")
    commit_files([(out / CONFIG_FILE, json_writer(_peft_config(config, base_name_or_path))),
                  (out / WEIGHTS_FILE, safetensors_writer(tensors, {"format": "pt"}))])
    return out


def _peft_config(config: LoRAConfig, base_name_or_path: str | None) -> dict[str, Any]:
    modules = [_MODULES[t].split(".")[1] for t in config.targets] + (["lm_head"] if config.head else [])
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_name_or_path,
        "r": config.rank,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "use_rslora": config.rslora,
        "target_modules": modules,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_dora": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "inference_mode": True,
    }


# -- import -----------------------------------------------------------------------------------------
# Options that either we read or that do not change what a trained adapter computes (metadata,
# settings of training-time or quantised variants that stay off). Any other option must be off.
_READ_OR_HARMLESS = {
    "peft_type", "r", "lora_alpha", "lora_dropout", "use_rslora", "bias", "init_lora_weights", "fan_in_fan_out",
    "target_modules", "exclude_modules", "layers_pattern", "base_model_name_or_path", "revision", "task_type",
    "inference_mode", "auto_mapping", "peft_version", "megatron_core", "qalora_group_size",
}
# init_lora_weights methods that rewrite the base weights (PiSSA, OLoRA, LoftQ, CorDA): their adapters
# belong to a modified base.
_PLAIN_INITS = (True, False, "gaussian", None)


def import_peft_adapters(model: nn.Module, adapter_dir: str | Path) -> LoRAConfig:
    """Give `model` (a plain Llama-family DecoderLM, e.g. `decoderlm.load(hf_dir).model`) the
    LoRA adapters of a PEFT directory; returns their LoRAConfig. Everything that is not plain
    LoRA on q/k/v/o/gate/up/down/lm_head is refused in one line before the model is touched."""
    directory = Path(adapter_dir)
    if lora_layers(model):
        raise DecoderLMError("the model already has LoRA adapters; import PEFT adapters into a plain model")
    _require_llama_family(model, f"import the PEFT adapters of {directory}")
    settings = read_json(directory / CONFIG_FILE)
    where = directory / CONFIG_FILE
    _refuse_options(settings, where)
    tensors = _read_adapter_weights(directory)
    adapters = _group(tensors, directory / WEIGHTS_FILE, model.config.n_layer)
    config = _lora_config(settings, adapters, where, model.config.n_layer)
    expected = adapter_shapes(model, config)
    ours = {_peft_key(name): name for name in expected}
    state = {ours.get(k, k): t for k, t in tensors.items() if not _BASE_COPY.fullmatch(k)}
    source = f"the PEFT adapters in {directory}"
    check_adapter_state(expected, state, source)  # before the model changes
    apply_lora(model, config)
    load_lora_state_dict(model, state, source)
    return config


def _read_adapter_weights(directory: Path) -> dict[str, torch.Tensor]:
    file = directory / WEIGHTS_FILE
    if not file.is_file() and (directory / "adapter_model.bin").is_file():
        raise DecoderLMError(f"{directory} has only pickled adapters (adapter_model.bin), which decoderlm never "
                             f"unpickles; save them again with safe_serialization=True")
    return read_safetensors(file)


def _refuse_options(settings: dict[str, Any], where: Path) -> None:
    if settings.get("peft_type") != "LORA":
        raise DecoderLMError(f"{where} describes a {settings.get('peft_type')!r} adapter; only LoRA adapters "
                             f"(peft_type LORA) can be imported")
    if settings.get("use_dora"):
        raise DecoderLMError(f"{where}: DoRA adapters (use_dora) are not supported; only plain LoRA")
    if settings.get("bias", "none") != "none":
        raise DecoderLMError(f"{where}: bias={settings['bias']!r} trains the base biases too; only bias='none' "
                             f"adapters are supported")
    if settings.get("init_lora_weights", True) not in _PLAIN_INITS:
        raise DecoderLMError(f"{where}: init_lora_weights={settings['init_lora_weights']!r} rewrites the base "
                             f"weights, so these adapters need that modified base; convert them to plain LoRA "
                             f"first (PEFT's path_initial_model_for_weight_conversion)")
    for key, value in settings.items():
        if key not in _READ_OR_HARMLESS and value not in (None, False, {}, [], ""):
            raise DecoderLMError(f"{where}: PEFT option {key}={value!r} is not supported (decoderlm imports plain "
                                 f"LoRA on q/k/v/o/gate/up/down and lm_head, one rank for all)")


def _group(tensors: dict[str, torch.Tensor], file: Path, n_layer: int) -> dict[tuple, dict[str, torch.Tensor]]:
    """(layer or None for the head, target) -> {'A': tensor, 'B': tensor}, from PEFT's tensor names."""
    adapters: dict[tuple, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        if _BASE_COPY.fullmatch(key):
            continue
        match = _KEY.fullmatch(key)
        target = _TARGET_OF.get(match.group(2) or match.group(3)) if match else None
        if target is None:
            raise DecoderLMError(f"{file}: tensor {key!r} is not a LoRA adapter on q/k/v/o/gate/up/down_proj or "
                                 f"lm_head, which is all decoderlm imports")
        layer = None if target == HEAD else int(match.group(1))
        if layer is not None and layer >= n_layer:
            raise DecoderLMError(f"{file} holds adapters for layer {layer} but the model has {n_layer} layers: "
                                 f"they were made for a different base model")
        adapters.setdefault((layer, target), {})[match.group(4)] = tensor
    return adapters


def _lora_config(settings: dict[str, Any], adapters: dict[tuple, dict[str, torch.Tensor]], where: Path,
                 n_layer: int) -> LoRAConfig:
    if not adapters:
        raise DecoderLMError(f"{where.parent / WEIGHTS_FILE} holds no LoRA adapters")
    for (layer, target), pair in adapters.items():
        if set(pair) != {"A", "B"}:
            have, lack = ("A", "B") if "A" in pair else ("B", "A")
            raise DecoderLMError(f"{where.parent / WEIGHTS_FILE} has lora_{have} but not lora_{lack} for the "
                                 f"{target} adapter of layer {layer}")
    per_layer = [{t for (layer, t) in adapters if layer == i} for i in range(n_layer)]
    if any(targets != per_layer[0] for targets in per_layer):
        raise DecoderLMError(f"{where.parent / WEIGHTS_FILE} adapts different projections in different layers "
                             f"(layers_to_transform or a pattern); decoderlm supports the same targets in every layer")
    # PEFT's defaults for keys a config leaves out: lora_alpha 8, lora_dropout 0, use_rslora false.
    config = LoRAConfig(rank=settings.get("r"), alpha=settings.get("lora_alpha", 8),
                        dropout=settings.get("lora_dropout", 0.0),
                        targets=tuple(t for t in TARGETS if t in per_layer[0]),
                        head=(None, HEAD) in adapters, rslora=bool(settings.get("use_rslora", False)))
    for (layer, target), pair in adapters.items():
        if pair["A"].dim() != 2 or pair["A"].shape[0] != config.rank:
            raise DecoderLMError(f"{where.parent / WEIGHTS_FILE}: the {target} adapter of layer {layer} has rank "
                                 f"{tuple(pair['A'].shape)[:1]} but r={config.rank}; per-module ranks "
                                 f"(rank_pattern) are not supported")
    return config
