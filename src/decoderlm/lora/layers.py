"""`LoRALinear`: a frozen linear layer plus low-rank adapters, one per projection it holds.

decoderlm fuses q, k and v into one matrix (and gate and up into another). An adapter on the
fused matrix would be one update shared by the three projections; instead each projection gets
its own A and B over its own rows of the output, so the layer computes exactly what PEFT's
separate adapters on q_proj, k_proj and v_proj compute, and the weights move between the two.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Adapter(nn.Module):
    """delta W = B @ A for one projection: A (rank, in), B (out, rank)."""

    def __init__(self, in_features: int, out_features: int, rank: int, generator: torch.Generator | None = None):
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, in_features, dtype=torch.float32))
        # B starts at zero, so training starts from exactly the base model.
        self.B = nn.Parameter(torch.zeros(out_features, rank, dtype=torch.float32))
        # PEFT's and the LoRA paper's start: A like nn.Linear's default init (Kaiming uniform, a = sqrt(5)).
        bound = 1.0 / math.sqrt(in_features)
        with torch.no_grad():
            self.A.uniform_(-bound, bound, generator=generator)

    def delta_weight(self) -> torch.Tensor:
        return self.B @ self.A  # (out, in)


class LoRALinear(nn.Module):
    """Replaces an `nn.Linear` in place. It keeps the linear layer's own `weight` and `bias`
    parameters (so the base state-dict keys do not change), and adds `adapters.<name>.A/B`.

    parts: the output rows in order, as (projection name, rows); for a fused qkv matrix
    [("q", q_dim), ("k", kv_dim), ("v", kv_dim)]. `targets` names the parts that get an adapter.
    """

    def __init__(self, linear: nn.Linear, parts: list[tuple[str, int]], targets: tuple[str, ...], config,
                 generator: torch.Generator | None = None):
        super().__init__()
        if sum(rows for _, rows in parts) != linear.out_features:
            raise ValueError(f"parts {parts} do not cover the {linear.out_features} output rows")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.original_dtype = linear.weight.dtype  # what merging gives back, even over a bf16-held base
        self.parts = list(parts)
        self.lora_config = config  # a LoRAConfig: rank, scale, dropout
        self.scale = config.scale
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        device = linear.weight.device
        self.adapters = nn.ModuleDict({name: Adapter(self.in_features, rows, config.rank, generator).to(device)
                                       for name, rows in parts if name in targets})
        self.train(linear.training)  # a model in eval mode stays there (no adapter dropout)

    def forward(self, x):
        # The base product in the base weights' dtype (bf16 when the frozen base is kept in bf16,
        # so autograd saves bf16 inputs, not an fp32 copy of every weight).
        w = self.weight
        bias = self.bias.to(w.dtype) if self.bias is not None else None
        y = F.linear(x.to(w.dtype), w, bias).to(x.dtype)
        return y + self._adapter_output(x).to(y.dtype)

    def _adapter_output(self, x):
        """(..., out_features): each part's B(A(dropout(x))) * scale, zeros for parts without one.
        Every adapter draws its own dropout mask, as PEFT's separate layers do."""
        pieces = []
        for name, rows in self.parts:
            if name in self.adapters:
                adapter = self.adapters[name]
                h = self.dropout(x.to(adapter.A.dtype))
                pieces.append(F.linear(F.linear(h, adapter.A), adapter.B))
            else:
                pieces.append(x.new_zeros(*x.shape[:-1], rows, dtype=self._adapter_dtype()))
        delta = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)
        return delta * self.scale

    def weight_with_adapters(self) -> torch.Tensor:
        """W + scale * delta W, differentiable, computed in fp32 (at least). For code that reads a
        layer's weight instead of calling it: the same as calling the layer, without adapter dropout."""
        compute = torch.promote_types(self.weight.dtype, torch.float32)
        rows = []
        for name, n in self.parts:
            if name in self.adapters:
                rows.append(self.adapters[name].delta_weight().to(compute))
            else:
                rows.append(torch.zeros(n, self.in_features, dtype=compute, device=self.weight.device))
        return self.weight.to(compute) + torch.cat(rows) * self.scale

    def loss(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """In place of the model's head: the head's cross-entropy on this layer's logits (adapters
        included), so `model(idx, targets)` trains a head adapter too."""
        from decoderlm.model.transformer import Head

        return Head.loss(self, x, targets)

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """The merged weight in the dtype the base weight had (fp32 merge even over a bf16-held base)."""
        return self.weight_with_adapters().to(self.original_dtype)

    def _adapter_dtype(self) -> torch.dtype:
        return next(iter(self.adapters.values())).A.dtype

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"parts={self.parts}, adapters={list(self.adapters)}, scale={self.scale:g}")

