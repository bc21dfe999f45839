"""Causal self-attention for training on CPU: torch's flash forward with a faster backward.

On CPU, SDPA runs a flash-attention kernel whose forward is quick but whose backward is slow at
the short sequences small models train on. At those sizes the whole (T, T) score matrix is small,
so the backward is cheaper as five batched matmuls plus two element-wise passes that inductor
fuses (timings: docs/model.md).

So training calls SDPA's own flash forward (which also returns each row's log-sum-exp) and this
backward, which recomputes the probabilities from the log-sum-exp (FlashAttention-2's algorithm,
without the tiling). torch has no such backward to call, so it is written by hand here. It is used
only where it was measured to help (see `use_fast_backward`); everything else goes through SDPA.
"""

from __future__ import annotations

import math

import torch

from decoderlm.compile_support import can_compile
from decoderlm.kernels import compiled
from decoderlm.kernels.compiled import CompiledKernel

# Above this many score elements per layer (batch * heads * T * T) the materialised scores would
# cost more memory than they save time; SDPA's tiled kernel takes over.
MAX_SCORE_ELEMENTS = 1 << 26  # 128 MiB in bf16


def use_fast_backward(q: torch.Tensor, k: torch.Tensor, dropout: float) -> bool:
    """Causal self-attention (no cache, no padding mask) being trained, in bf16, on CPU, at a size
    where compiling the backward pays off."""
    B, H, T, _ = q.shape
    bf16_on_cpu = q.device.type == "cpu" and q.dtype == torch.bfloat16
    training = torch.is_grad_enabled() and q.requires_grad and dropout == 0.0
    self_attention = k.shape[2] == T > 1  # not new tokens against a cache
    worth_it = q.numel() >= compiled.MIN_ELEMENTS and B * H * T * T <= MAX_SCORE_ELEMENTS
    return (bf16_on_cpu and training and self_attention and worth_it
            and _flash_op() is not None and _compiler_ready())


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q (B, H, T, D), k and v (B, Hkv, T, D) with H a multiple of Hkv -> (B, H, T, D)."""
    return _CausalAttention.apply(q, k, v)


def _flash_op():
    return getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _compiler_ready() -> bool:
    """Uncompiled, the backward's float32 temporaries make it slower than SDPA's."""
    return torch.compiler.is_compiling() or can_compile(torch.device("cpu"))


class _CausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v):
        scale = 1.0 / math.sqrt(q.shape[-1])
        # The CPU flash kernel takes fewer key/value heads than query heads (GQA, MQA) as they are.
        out, logsumexp = _flash_op()(q, k, v, 0.0, True, scale=scale)[:2]
        ctx.save_for_backward(q, k, v, out, logsumexp)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        return _attention_backward_kernel(*ctx.saved_tensors, grad_out.contiguous(), ctx.scale)


def attention_backward(q, k, v, out, logsumexp, grad_out, scale: float):
    """Gradients of causal softmax attention with respect to q, k and v.

    With P = softmax(scale * q k^T) (causal) and dO the output's gradient:
    dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(dO * O)), dQ = scale * dS K, dK = scale * dS^T Q.
    The query heads that share a key/value head are stacked along the rows, so each product is one
    batched matmul over (batch, key/value head) and dK, dV come out already summed over the group.
    """
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    rows = H // Hkv * T
    q_rows = q.reshape(B, Hkv, rows, D)
    grad_rows = grad_out.reshape(B, Hkv, rows, D)
    query_pos = torch.arange(T, device=q.device).repeat(H // Hkv).view(rows, 1)
    key_pos = torch.arange(T, device=q.device).view(1, T)
    # logsumexp is (B, H, T) in float32: P = exp(scale * s - logsumexp) on and below the diagonal.
    scores = torch.matmul(q_rows, k.transpose(-1, -2)).float() * scale
    probs = torch.where(key_pos <= query_pos, torch.exp(scores - logsumexp.reshape(B, Hkv, rows, 1)), 0.0)
    probs = probs.to(q.dtype)
    grad_v = torch.matmul(probs.transpose(-1, -2), grad_rows)
    grad_probs = torch.matmul(grad_rows, v.transpose(-1, -2))
    row_dot = (grad_out.float() * out.float()).sum(-1).reshape(B, Hkv, rows, 1)
    grad_scores = (probs * (grad_probs.float() - row_dot) * scale).to(q.dtype)
    grad_q = torch.matmul(grad_scores, k).view(B, H, T, D)
    grad_k = torch.matmul(grad_scores.transpose(-1, -2), q_rows)
    return grad_q, grad_k, grad_v


_attention_backward_kernel = CompiledKernel(attention_backward)
