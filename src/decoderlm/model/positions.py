"""Position information: added tables (sinusoidal, learned) and rotary embeddings (RoPE)."""

from __future__ import annotations

import math

import torch
from torch import nn

from decoderlm.model.compiled_kernels import CompiledKernel


def sinusoidal_table(max_len: int, dim: int) -> torch.Tensor:
    """The fixed table of "Attention Is All You Need": even channels sin, odd channels cos. (T, C)"""
    position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(max_len, dim)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)
    return table


class SinusoidalPositions(nn.Module):
    def __init__(self, max_len: int, dim: int):
        super().__init__()
        self.register_buffer("table", sinusoidal_table(max_len, dim), persistent=False)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, C)
        return self.table[position_ids]


class LearnedPositions(nn.Embedding):
    """One trained vector per position (GPT-2's wpe)."""

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, C)
        return super().forward(position_ids)


class Rotary(nn.Module):
    """Rotary position embedding in Llama's "rotate-half" layout: channel i pairs with i + D/2.

    torch has no RoPE module, so this is written by hand (as in Llama and gpt-fast). The cos/sin
    tables are computed once for the whole window, in float32, and indexed by position.
    """

    def __init__(self, head_dim: int, max_len: int, theta: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # (T, D/2)
        angles = torch.cat([freqs, freqs], dim=-1)  # (T, D)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def tables(self, position_ids: torch.Tensor, dtype: torch.dtype):
        """cos, sin for (B, T) positions, shaped (B, 1, T, D) to broadcast over heads."""
        return self.cos[position_ids].unsqueeze(1).to(dtype), self.sin[position_ids].unsqueeze(1).to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, D) queries or keys by their positions' angles."""
    return x * cos + rotate_half(x) * sin


def _rotate_queries_and_keys(q, k, cos, sin):
    """apply_rotary to both queries and keys."""
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)


# One fused compiled kernel while training on CPU, the plain function otherwise.
rotate_queries_and_keys = CompiledKernel(_rotate_queries_and_keys, training_only=True)
