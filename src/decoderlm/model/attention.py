"""Causal self-attention: multi-head, grouped-query and multi-query, through torch's SDPA."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from decoderlm.config import ModelConfig
from decoderlm.model.positions import rotate_queries_and_keys
from decoderlm.model.training_attention import causal_attention, use_fast_backward


class Attention(nn.Module):
    """Queries have `n_head` heads; keys and values `n_kv_head` (== n_head: MHA, 1: MQA, else GQA).

    q, k and v come from one fused projection (one matmul instead of three).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.q_dim = self.n_head * self.head_dim
        self.kv_dim = self.n_kv_head * self.head_dim
        self.qkv = nn.Linear(config.d_model, self.q_dim + 2 * self.kv_dim, bias=config.qkv_bias)
        if config.attn_out_proj:
            self.proj = nn.Linear(self.q_dim, config.d_model, bias=config.attn_out_bias)
        else:
            if self.q_dim != config.d_model:
                raise ValueError("without an output projection, n_head * head_dim must equal d_model")
            self.proj = nn.Identity()
        self.dropout = config.attn_dropout

    def forward(self, x, rotary=None, mask=None, is_causal=False, cache=None, layer=0, start=0):
        """x: (B, T, C). rotary: (cos, sin) or None. mask: bool (B, 1, T, S), True = may attend."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split([self.q_dim, self.kv_dim, self.kv_dim], dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if rotary is not None:
            # In the projection's dtype (bf16 under autocast): float32 tables would make q and k float32.
            cos, sin = rotary[0].to(q.dtype), rotary[1].to(q.dtype)
            q, k = rotate_queries_and_keys(q, k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, start, k, v)  # (B, Hkv, S, D), S = start + T
        dropout = self.dropout if self.training else 0.0
        if is_causal and mask is None and use_fast_backward(q, k, dropout):
            y = causal_attention(q, k, v)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v,
                attn_mask=mask,
                is_causal=is_causal and mask is None,
                dropout_p=dropout,
                enable_gqa=self.n_kv_head != self.n_head,
            )  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, self.q_dim)
        return self.proj(y)
