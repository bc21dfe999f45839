"""The adapters' weights alone (save, load with checks), and merging them into a plain DecoderLM."""

from __future__ import annotations

import torch
from torch import nn

from decoderlm.errors import DecoderLMError
from decoderlm.lora.apply import lora_layers


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter tensors only, e.g. 'blocks.0.attn.qkv.adapters.k.A' (detached, contiguous)."""
    state = {}
    for prefix, layer in lora_layers(model).items():
        for name, adapter in layer.adapters.items():
            state[f"{prefix}.adapters.{name}.A"] = adapter.A.detach().contiguous()
            state[f"{prefix}.adapters.{name}.B"] = adapter.B.detach().contiguous()
    return state


def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str = "the adapters") -> None:
    """Copy adapter tensors into a model that has adapters (apply_lora with the same config),
    after checking that names and shapes agree: adapters made for another base are one line."""
    expected = lora_state_dict(model)
    if not expected:
        raise DecoderLMError("the model has no LoRA adapters to load into; apply_lora first")
    check_adapter_state({name: tuple(t.shape) for name, t in expected.items()}, state, source)
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in state.items():
            parameters[name].copy_(tensor)


def check_adapter_state(expected: dict[str, tuple[int, ...]], state: dict[str, torch.Tensor], source: str) -> None:
    """One line if `state` does not hold exactly the adapter tensors `expected` (name -> shape)."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise DecoderLMError(f"{source} hold {unexpected[0]!r} ({len(unexpected)} unexpected), which this model "
                             f"does not have: they were made for another base model or other LoRA targets")
    if missing:
        raise DecoderLMError(f"{source} lack {missing[0]!r} ({len(missing)} missing): they were made for another "
                             f"base model or other LoRA targets")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name]):
            raise DecoderLMError(f"{source} were made for a different base model: {name} has shape "
                                 f"{tuple(tensor.shape)} there and {tuple(expected[name])} here")
        if not tensor.is_floating_point():
            raise DecoderLMError(f"{source}: {name} has dtype {tensor.dtype}, expected floating point")


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the plain model: every adapted weight replaced by W + scale * B @ A,
    no adapter tensors (the keys a DecoderLM without adapters has)."""
    layers = lora_layers(model)
    merged = {f"{prefix}.weight": layer.merged_weight() for prefix, layer in layers.items()}
    state = {}
    for name, tensor in model.state_dict().items():
        prefix = name.rsplit(".adapters.", 1)[0]
        if ".adapters." in name and prefix in layers:
            continue
        state[name] = merged.get(name, tensor)
        if name.endswith(".bias") and name[: -len(".bias")] in layers:  # a bias held in bf16 goes back
            state[name] = tensor.to(layers[name[: -len(".bias")]].original_dtype)
    return state


def merge_lora(model: nn.Module) -> nn.Module:
    """A new plain model of the same class (no adapters, nothing frozen) whose weights are the
    merged ones; `model` itself is left as it is. Its logits equal the adapted model's."""
    if not lora_layers(model):
        raise DecoderLMError("the model has no LoRA adapters to merge")
    state = merged_state_dict(model)
    reference = model.tok_emb.weight
    plain = type(model)(model.config).to(device=reference.device, dtype=reference.dtype)
    plain.load_state_dict(state, strict=True)
    return plain.train(model.training)
