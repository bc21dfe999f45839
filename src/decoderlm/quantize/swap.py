"""Quantize a DecoderLM from outside by swapping its nn.Linear layers for quantized ones.

Which layers: every nn.Linear (attention q/k/v and output projections, the MLP / SwiGLU layers,
a shared MoE expert) and the output head (as the other layers unless head_bits says otherwise), but
not the MoE router (tiny, and a flipped routing decision changes a token's whole computation). The
embedding stays in floating point: decoding reads one of its rows per token, so shrinking it saves
no bandwidth. A head tied to the embedding gets its own quantized copy. MoE expert stacks are plain
parameters and stay as they are.
"""

from __future__ import annotations

import torch
from torch import nn

from decoderlm.errors import DecoderLMError
from decoderlm.model.transformer import Head
from decoderlm.quantize.linear import Int4Linear, Int8Linear
from decoderlm.quantize.spec import QuantSpec, parse_mode

INT8_WIDTH_MULTIPLE = 16  # torch's bf16 int8 kernel reads past the end of other widths (measured: crashes)
QUANTIZED = (Int8Linear, Int4Linear)


# DecoderLM.forward(idx, targets) asks its head for the loss; a quantized head computes it as Head does.
class Int8Head(Int8Linear):
    loss = Head.loss


class Int4Head(Int4Linear):
    loss = Head.loss


def _classes(full_name: str) -> tuple[type, type]:
    """(int8 class, int4 class) for the layer called `full_name`."""
    return (Int8Head, Int4Head) if full_name == "lm_head" else (Int8Linear, Int4Linear)


def quantization_of(model: nn.Module) -> QuantSpec | None:
    """The QuantSpec a model was quantized with, or None."""
    return getattr(model, "quantization", None)


def quantize_model(model: nn.Module, mode="int8") -> nn.Module:
    """Quantize `model` in place ('int8', 'int4' or a QuantSpec) and return it.

    Quantize from float32 (or bf16) weights before casting: scales are computed in float32.
    Every layer is checked before any is changed, so a bad group size leaves the model as it was.
    """
    spec = parse_mode(mode)
    if quantization_of(model) is not None:
        raise DecoderLMError(f"the model is already quantized ({quantization_of(model).label})")
    for parent, attr, full, bits, linear in _plan(model, spec):
        int8, int4 = _classes(full)
        new = int8.from_linear(linear) if bits == 8 else int4.from_linear(linear, spec.group_size)
        setattr(parent, attr, new)
    model.quantization = spec
    return model


def prepare_layout(model: nn.Module, spec: QuantSpec) -> nn.Module:
    """Give a freshly built model the quantized layers of `spec` (empty), ready for load_state_dict."""
    for parent, attr, full, bits, linear in _plan(model, spec):
        dtype, device = linear.weight.dtype, linear.weight.device
        bias = linear.bias is not None
        int8, int4 = _classes(full)
        if bits == 8:
            new = int8(linear.in_features, linear.out_features, bias, dtype, device)
        else:
            new = int4(linear.in_features, linear.out_features, bias, spec.group_size, dtype, device)
        setattr(parent, attr, new)
    model.quantization = spec
    return model


def _plan(model: nn.Module, spec: QuantSpec) -> list[tuple[nn.Module, str, str, int, nn.Linear]]:
    """(parent module, attribute, full name, bits, linear) for each layer to quantize, all checked."""
    chosen = []
    for name, parent in model.named_modules():
        for attr, child in parent.named_children():
            if not isinstance(child, nn.Linear) or attr == "router":
                continue
            full = f"{name}.{attr}" if name else attr
            bits = spec.head_bits if full == "lm_head" else spec.bits
            if bits == 16:
                continue
            _check_width(full, child.in_features, bits, spec.group_size)
            chosen.append((parent, attr, full, bits, child))
    return chosen


def _check_width(name: str, width: int, bits: int, group_size: int | None) -> None:
    if bits == 8 and width % INT8_WIDTH_MULTIPLE:
        raise DecoderLMError(f"int8 quantization needs input widths that are multiples of {INT8_WIDTH_MULTIPLE} "
                             f"(torch's CPU kernel); {name} takes {width}")
    if bits == 4 and width % group_size:
        raise DecoderLMError(f"--group-size {group_size} does not divide the width {width} of {name}; "
                             f"choose a group size that divides every layer's input width")


def linear_weight_bytes(model: nn.Module, float_dtype: torch.dtype | None = None) -> int:
    """Bytes of the linear layers' weights (with scales and zeros): what one decoding step at batch 1
    reads. Floating-point tensors are counted at `float_dtype`'s size (default: their own)."""
    def size(t: torch.Tensor) -> int:
        element = t.element_size() if float_dtype is None or not t.is_floating_point() else float_dtype.itemsize
        return t.numel() * element

    total = 0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            total += size(module.weight)
        elif isinstance(module, QUANTIZED):
            total += sum(size(t) for name, t in module.state_dict().items() if name != "bias")
    return total
