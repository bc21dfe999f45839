"""Helpers shared by the Hugging Face converters: reading config fields, refusing what we do not
implement, and taking weights out of a checkpoint by name."""

from __future__ import annotations

from typing import Any

import torch

from decoderlm.errors import DecoderLMError

_MISSING = object()


def refuse(what: str) -> DecoderLMError:
    """The error for a checkpoint that uses something decoderlm does not implement."""
    return DecoderLMError(f"unsupported Hugging Face checkpoint: {what}")


def field(hf: dict[str, Any], *names: str, default: Any = _MISSING) -> Any:
    """The first of `names` present in config.json (alternative spellings), else `default`;
    without a default, a one-line error naming the missing key."""
    for name in names:
        if name in hf and hf[name] is not None:
            return hf[name]
    if default is _MISSING:
        raise DecoderLMError(f"config.json lacks {names[0]!r}, which a {hf.get('model_type')} checkpoint needs")
    return default


def require(hf: dict[str, Any], *keys: str | tuple[str, ...]) -> None:
    """One error listing every required key config.json lacks (a tuple: alternative spellings)."""
    groups = [(k,) if isinstance(k, str) else k for k in keys]
    missing = [g[0] for g in groups if all(hf.get(name) is None for name in g)]
    if missing:
        names = ", ".join(repr(m) for m in missing)
        raise DecoderLMError(f"config.json lacks {names}, which a {hf.get('model_type')} checkpoint needs")


def positive_int(hf: dict[str, Any], *names: str, default: Any = _MISSING) -> int:
    value = field(hf, *names, default=default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise DecoderLMError(f"config.json: {names[0]} must be a positive integer, got {value!r}")
    return value


def number(hf: dict[str, Any], *names: str, default: Any = _MISSING) -> float:
    value = field(hf, *names, default=default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DecoderLMError(f"config.json: {names[0]} must be a number, got {value!r}")
    return float(value)


def flag(hf: dict[str, Any], name: str, default: bool) -> bool:
    value = hf.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise DecoderLMError(f"config.json: {name} must be true or false, got {value!r}")
    return value


def rope_theta(hf: dict[str, Any]) -> float:
    """The rotary base, from either layout: transformers 4 (`rope_theta` beside an optional
    `rope_scaling` dict) or transformers 5 (`rope_parameters` dict holding `rope_theta`).
    Only plain RoPE is implemented; every scaling scheme is refused by name."""
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if not isinstance(params, dict):
        raise DecoderLMError(f"config.json: rope parameters must be an object, got {params!r}")
    if params and all(isinstance(v, dict) for v in params.values()):
        raise refuse("per-layer rope parameters")
    rope_type = params.get("rope_type") or params.get("type") or "default"
    if rope_type != "default":
        raise refuse(f"rope scaling type {rope_type!r} (only plain RoPE is implemented)")
    partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor"))
    if partial is not None and partial != 1.0:
        raise refuse(f"partial rotary embeddings (partial_rotary_factor={partial})")
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or theta <= 0:
        raise DecoderLMError(f"config.json: rope_theta must be a positive number, got {theta!r}")
    return float(theta)


def refuse_common(hf: dict[str, Any]) -> None:
    """Settings of any model type that change the weights' meaning and that we never implement."""
    if hf.get("quantization_config"):
        method = hf["quantization_config"].get("quant_method", "?") if isinstance(hf["quantization_config"], dict) else "?"
        raise refuse(f"quantized weights (quant_method {method!r})")
    if hf.get("is_encoder_decoder"):
        raise refuse("encoder-decoder model")
    if hf.get("add_cross_attention"):
        raise refuse("cross-attention layers (add_cross_attention)")
    layer_types = hf.get("layer_types")
    if layer_types and any(t != "full_attention" for t in layer_types):
        other = next(t for t in layer_types if t != "full_attention")
        raise refuse(f"layer type {other!r} (only full attention is implemented)")


class WeightReader:
    """Takes tensors out of a checkpoint's state dict by name and reports what is missing or left.

    Some checkpoints omit the wrapper prefix ("model." / "transformer."): saved from the base model
    rather than the *ForCausalLM class, so both spellings are accepted.
    """

    def __init__(self, state: dict[str, torch.Tensor], prefix: str, model_type: str):
        self.state = dict(state)
        self.model_type = model_type
        has_prefix = any(k.startswith(prefix) for k in self.state)
        self.prefix = prefix if has_prefix else ""

    def take(self, name: str, *, prefixed: bool = True) -> torch.Tensor:
        key = self.prefix + name if prefixed else name
        if key not in self.state:
            raise DecoderLMError(f"the {self.model_type} checkpoint lacks weight {key!r}; "
                                 f"the weights and config.json do not belong together")
        return self.state.pop(key)

    def take_if(self, present: bool, name: str) -> torch.Tensor | None:
        return self.take(name) if present else None

    def discard(self, name: str, *, prefixed: bool = True) -> None:
        self.state.pop(self.prefix + name if prefixed else name, None)

    def finish(self, ignorable=lambda key: False) -> None:
        """Refuse weights we have no place for (they would be silently dropped otherwise)."""
        left = sorted(k for k in self.state if not ignorable(k))
        if left:
            raise DecoderLMError(f"the {self.model_type} checkpoint has weight {left[0]!r} ({len(left)} unused) "
                                 f"that its config.json does not explain; refusing to drop weights")


def set_if(state: dict[str, torch.Tensor], name: str, tensor: torch.Tensor | None) -> None:
    if tensor is not None:
        state[name] = tensor
