"""Position information: a table added to the token embeddings (sinusoidal, learned) or rotary
embeddings (RoPE) that turn queries and keys inside attention."""

from __future__ import annotations

import math

import torch
from torch import nn


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

    def forward(self, positions: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, C)
        return self.table[positions]


class LearnedPositions(nn.Embedding):
    """One trained vector per position (GPT-2's wpe): (B, T) -> (B, T, C)."""


class Rotary(nn.Module):
    """Rotary position embedding in Llama's "rotate-half" layout: channel i pairs with i + D/2.

    torch has no RoPE module, so this is written by hand (as in Llama and gpt-fast). The cos/sin
    tables are computed once for the whole window, in float32; `forward` looks up the rows of the
    given positions, and attention turns its queries and keys with `apply_rotary`.
    """

    def __init__(self, head_dim: int, max_len: int, theta: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # (T, D/2)
        angles = torch.cat([freqs, freqs], dim=-1)  # (T, D)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for (B, T) positions, shaped (B, 1, T, D) to broadcast over heads."""
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, D) queries or keys by their positions' angles."""
    return x * cos + rotate_half(x) * sin
