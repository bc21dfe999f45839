"""Faster layers for training and decoding on CPU, applied to a built model from outside.

The model (decoderlm.model) is the plain PyTorch reference. `apply_cpu_kernels(model)` swaps some
of its layers for subclasses that override one method with a kernel (layers.py): compiled
RMSNorm, SwiGLU and rotary embedding, a faster attention backward, and a head + cross-entropy
over chunks of rows for training; for decoding, a bf16 step's single query laid out as several
rows (decoding_attention.py). Parameters, state_dict and results stay those of the reference
(tested layer by layer). Each kernel falls back to the plain op where it does not pay: tiny
tensors, other devices, inside a whole-model torch.compile, or without a working C++ compiler.
"""

from __future__ import annotations

from torch import nn

from decoderlm.kernels.layers import ChunkedHead, CompiledRMSNorm, CompiledSwiGLU, CPUAttention
from decoderlm.model.attention import Attention
from decoderlm.model.feedforward import SwiGLU
from decoderlm.model.transformer import Head

# reference layer -> its kernel subclass
CPU_KERNELS: dict[type, type] = {
    nn.RMSNorm: CompiledRMSNorm,
    SwiGLU: CompiledSwiGLU,
    Attention: CPUAttention,
    Head: ChunkedHead,
}


def apply_cpu_kernels(model: nn.Module) -> nn.Module:
    """Swap the CPU training kernels into `model` in place and return it. Call it on the model that
    computes, before distribution wraps it (FSDP swaps classes too)."""
    for module in model.modules():
        kernel_class = CPU_KERNELS.get(type(module))
        if kernel_class is not None:
            module.__class__ = kernel_class  # the subclass adds no state: same parameters, same hooks
    return model


__all__ = ["CPU_KERNELS", "apply_cpu_kernels"]
