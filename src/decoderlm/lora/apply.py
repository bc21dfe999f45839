"""Adapters applied to a DecoderLM from outside: swap its linear layers for `LoRALinear`, freeze
the base, save and load the adapters alone, and merge them back into a plain DecoderLM.

The model's own code knows nothing of LoRA; layers are found by the names the model gives them
(blocks.N.attn.qkv / attn.proj, blocks.N.ffn.gate_up / ffn.up / ffn.down, lm_head).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from decoderlm.errors import DecoderLMError
from decoderlm.lora.config import HEAD, LoRAConfig
from decoderlm.lora.layers import LoRALinear


@dataclass(frozen=True)
class Site:
    """One linear layer that adapters can attach to: its parent, attribute, full name and parts."""
    parent: nn.Module
    attr: str
    name: str
    parts: tuple[tuple[str, int], ...]


def lora_sites(model: nn.Module) -> list[Site]:
    """Every linear layer of `model` that a LoRA target names, with the projections it holds."""
    config = model.config
    q_dim, kv_dim = config.n_head * config.head_dim, config.n_kv_head * config.head_dim
    sites = []
    for i, block in enumerate(model.blocks):
        candidates = [("attn", block.attn, "qkv", (("q", q_dim), ("k", kv_dim), ("v", kv_dim))),
                      ("attn", block.attn, "proj", (("o", None),))]
        if block.ffn is not None:  # SwiGLU: gate_up and down; the classic MLP: up and down
            gate_up = getattr(block.ffn, "gate_up", None)
            half = gate_up.out_features // 2 if isinstance(gate_up, nn.Linear) else None
            candidates += [("ffn", block.ffn, "gate_up", (("gate", half), ("up", half))),
                           ("ffn", block.ffn, "up", (("up", None),)),
                           ("ffn", block.ffn, "down", (("down", None),))]
        for where, parent, attr, parts in candidates:
            layer = getattr(parent, attr, None)
            if isinstance(layer, nn.Linear):  # not an Identity (no output projection) nor MoE expert stacks
                sites.append(Site(parent, attr, f"blocks.{i}.{where}.{attr}", _widths(parts, layer)))
    if isinstance(getattr(model, "lm_head", None), nn.Linear):
        sites.append(Site(model, "lm_head", "lm_head", ((HEAD, model.lm_head.out_features),)))
    return sites


def _widths(parts, layer: nn.Linear) -> tuple[tuple[str, int], ...]:
    return tuple((name, layer.out_features if rows is None else rows) for name, rows in parts)


def apply_lora(model: nn.Module, config: LoRAConfig, *, base_dtype: torch.dtype | None = None,
               generator: torch.Generator | None = None) -> nn.Module:
    """Give `model` (a DecoderLM) adapters in place and freeze everything else; returns `model`.

    base_dtype: hold the frozen weights of the adapted layers in this dtype (torch.bfloat16 halves
    their memory); the adapters are float32 (the trainer's precision set-up may cast the model).
    generator: for the adapters' A init (default: torch's global generator).
    B starts at zero, so the adapted model computes exactly what the base computes.
    """
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise DecoderLMError("the model already has LoRA adapters; merge them (merge_lora) before adding new ones")
    if base_dtype is not None and not (isinstance(base_dtype, torch.dtype) and base_dtype.is_floating_point):
        raise DecoderLMError(f"the base dtype must be a floating-point torch dtype such as torch.bfloat16, "
                             f"got {base_dtype!r}")
    wanted = set(config.targets) | ({HEAD} if config.head else set())
    _refuse_unsupported(model, config, wanted)
    sites = lora_sites(model)
    _check_all_found(model, sites, wanted)  # everything is checked before the model changes
    for p in model.parameters():
        p.requires_grad_(False)
    for site in sites:
        names = tuple(name for name, _ in site.parts if name in wanted)
        if names:
            layer = LoRALinear(getattr(site.parent, site.attr), list(site.parts), names, config, generator)
            if base_dtype is not None:
                _hold_base_in(layer, base_dtype)
            setattr(site.parent, site.attr, layer)
    return model


def adapter_shapes(model: nn.Module, config: LoRAConfig) -> dict[str, tuple[int, int]]:
    """The adapter tensors apply_lora(model, config) would create, name -> shape, for a plain model
    (so that adapters from a file can be checked before the model is changed)."""
    wanted = set(config.targets) | ({HEAD} if config.head else set())
    shapes = {}
    for site in lora_sites(model):
        in_features = getattr(site.parent, site.attr).in_features
        for name, rows in site.parts:
            if name in wanted:
                shapes[f"{site.name}.adapters.{name}.A"] = (config.rank, in_features)
                shapes[f"{site.name}.adapters.{name}.B"] = (rows, config.rank)
    return shapes


def _refuse_unsupported(model: nn.Module, config: LoRAConfig, wanted: set[str]) -> None:
    if model.config.ffn == "moe" and wanted & {"gate", "up", "down"}:
        raise DecoderLMError("LoRA on mixture-of-experts feed-forward layers is not supported; "
                             "target the attention only (targets q,k,v,o)")
    if config.head and model.lm_head.weight is model.tok_emb.weight:
        raise DecoderLMError("LoRA on the head of a model with tied embeddings is not supported (the head is "
                             "the embedding matrix, and merging would untie them); leave out the head")


def _check_all_found(model: nn.Module, sites: list[Site], wanted: set[str]) -> None:
    have = list(dict.fromkeys(name for site in sites for name, _ in site.parts))
    missing = [t for t in wanted if t not in have]
    if missing:
        raise DecoderLMError(f"LoRA target {sorted(missing)[0]!r} matches no layer of this model "
                             f"(ffn={model.config.ffn}); its targets are: {', '.join(have)}")


def _hold_base_in(layer: LoRALinear, dtype: torch.dtype) -> None:
    layer.weight = nn.Parameter(layer.weight.detach().to(dtype), requires_grad=False)
    if layer.bias is not None:
        layer.bias = nn.Parameter(layer.bias.detach().to(dtype), requires_grad=False)


# -- inspection ---------------------------------------------------------------------------------------
def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_config_of(model: nn.Module) -> LoRAConfig | None:
    """The LoRAConfig the model's adapters were made with, or None for a model without adapters."""
    return next((layer.lora_config for layer in lora_layers(model).values()), None)


@dataclass(frozen=True)
class ParameterCount:
    trainable: int
    total: int

    @property
    def fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def summary(self) -> str:
        return f"{self.trainable:,} trainable parameters of {self.total:,} ({100 * self.fraction:.2f}%)"


def count_parameters(model: nn.Module) -> ParameterCount:
    """Trainable (requires_grad) and all parameters, a tied matrix counted once."""
    params = list(model.parameters())
    return ParameterCount(sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))
