"""The CPU training kernels as layers: each subclasses the reference layer it replaces and
overrides one method (two for attention), with the same parameters, state_dict and results.
`decoderlm.kernels.apply_cpu_kernels` swaps them into a built model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from decoderlm.kernels.compiled import CompiledKernel
from decoderlm.kernels.decoding_attention import single_query_attention, use_single_query_layout
from decoderlm.kernels.linear_cross_entropy import linear_cross_entropy
from decoderlm.kernels.training_attention import causal_attention, use_fast_backward
from decoderlm.model.attention import Attention
from decoderlm.model.feedforward import SwiGLU, swiglu
from decoderlm.model.transformer import IGNORE_INDEX, Head

# One kernel per function, shared by every layer, so each shape compiles once.
_rms_norm = CompiledKernel(F.rms_norm, training_only=True)
_swiglu = CompiledKernel(swiglu, training_only=True)
_rotate = CompiledKernel(Attention.rotate, training_only=True)


class CompiledRMSNorm(nn.RMSNorm):
    """torch has no fused RMSNorm kernel for CPU: compiled, forward and backward are one loop each."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _rms_norm(x, self.normalized_shape, self.weight, self.eps)


class CompiledSwiGLU(SwiGLU):
    """silu(gate) * up compiled into one pass instead of three."""

    def forward(self, x):
        return self.down(_swiglu(self.gate_up(x)))


class CPUAttention(Attention):
    """Rotary embedding compiled into one pass; causal self-attention trained in bf16 through SDPA's
    flash forward and a faster backward (training_attention.py); a decoding step's single query in
    bf16 laid out as several rows (decoding_attention.py). Everything else: SDPA."""

    @staticmethod
    def rotate(q, k, cos, sin):
        return _rotate(q, k, cos, sin)

    def attend(self, q, k, v, mask):
        if mask is None and use_fast_backward(q, k, self.dropout if self.training else 0.0):
            return causal_attention(q, k, v)
        if use_single_query_layout(q, self.training):
            return single_query_attention(q, k, v, mask)
        return super().attend(q, k, v, mask)


class ChunkedHead(Head):
    """The loss without the (tokens, vocabulary) logits array: linear_cross_entropy.py. Inside a
    compiled model, and off CPU, the plain head + cross-entropy (inductor fuses it as well)."""

    def loss(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling() or x.device.type != "cpu":
            return super().loss(x, targets)
        return linear_cross_entropy(x.flatten(0, 1), self.weight, self.bias, targets.flatten(), IGNORE_INDEX)
