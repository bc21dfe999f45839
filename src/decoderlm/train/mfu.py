"""Model FLOPs utilisation: FLOPs per token, the machine's measured matmul peak, and the
tokens/s meter. The trainer's MFU and `decoderlm bench --suite train` both use these."""

from __future__ import annotations

import functools
import time

import torch
from torch import nn


def flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Training FLOPs per token, PaLM's estimate: 6 per matmul weight (forward 2, backward 4) plus
    12 * layers * heads * head_dim * seq_len for attention's scores and weighted values.

    Matmul weights: every nn.Linear weight (a head tied to the embedding counts once, as the
    head; an embedding lookup or learned position table is no matmul), and of a mixture of experts
    the share of expert weights one token uses (experts_per_token of n_experts). Biases and norm
    weights are element-wise, not counted.
    """
    config = model.config
    matmul_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    if config.ffn == "moe":
        experts = sum(block.ffn.gate_up.numel() + block.ffn.down.numel() for block in model.blocks)
        matmul_weights += experts * config.experts_per_token / config.n_experts
    attention = 12 * config.n_layer * config.n_head * config.head_dim * seq_len
    return 6.0 * matmul_weights + attention


@functools.lru_cache(maxsize=None)
def peak_flops(device_type: str, dtype: torch.dtype) -> float:
    """The best FLOP/s of a square matmul in `dtype` on this device: the denominator of MFU where
    no datasheet peak is given (train.peak_flops). Best of several products, since a shared
    machine's speed wanders; measured once per process. 1024^3 on CPU keeps it near 0.1 s, since
    every training run pays it; larger products come a little closer to the peak."""
    device = torch.device(device_type)
    n = 1024 if device_type == "cpu" else 4096
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device_type == "cuda" else (lambda: None)
    a @ b  # warm-up: kernel selection, page faults
    sync()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


class Throughput:
    """Tokens/s and MFU over the interval since the last report."""

    def __init__(self, flops_per_token: float, peak_flops: float | None):
        self.flops_per_token, self.peak = flops_per_token, peak_flops
        self.reset()

    def reset(self):
        self.start, self.tokens = time.perf_counter(), 0

    def add(self, tokens: int):
        self.tokens += tokens

    def report(self) -> tuple[float, float | None]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = self.tokens / elapsed
        mfu = rate * self.flops_per_token / self.peak if self.peak else None
        self.reset()
        return rate, mfu
