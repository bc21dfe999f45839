"""Causal self-attention: multi-head, grouped-query and multi-query, through torch's SDPA."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from decoderlm.config import ModelConfig
from decoderlm.model.positions import apply_rotary


class Attention(nn.Module):
    """Queries have `n_head` heads; keys and values `n_kv_head` (== n_head: MHA, 1: MQA, else GQA).

    q, k and v come from one fused projection (one matmul instead of three).
    """

    def __init__(self, config: ModelConfig, layer_index: int = 0):
        super().__init__()
        self.layer_index = layer_index  # which layer of a KV cache this one reads and writes
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

    def forward(self, x, rope=None, mask=None, cache=None):
        """x: (B, T, C) -> (B, T, C). rope: (cos, sin) (B, 1, T, D) or None. mask: bool, broadcastable
        to (B, 1, T, S), True = may attend; None = causal. cache: a KVCache or None."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split([self.q_dim, self.kv_dim, self.kv_dim], dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if rope is not None:
            # In q's dtype (bf16 under autocast): float32 tables would make q and k float32.
            q, k = self.rotate(q, k, rope[0].to(q.dtype), rope[1].to(q.dtype))
        if cache is not None:
            k, v = cache.update(self.layer_index, k, v)  # (B, Hkv, S, D): the cached keys and these
        y = self.attend(q, k, v, mask)  # (B, H, T, D)
        return self.proj(y.transpose(1, 2).reshape(B, T, self.q_dim))

    @staticmethod
    def rotate(q, k, cos, sin):
        """RoPE: turn each query and key by its position's angles."""
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)

    def attend(self, q, k, v, mask):
        """softmax(q k^T / sqrt(D)) v over the allowed keys; causal when `mask` is None."""
        return F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=mask,
            is_causal=mask is None and q.shape[2] > 1,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.n_kv_head != self.n_head,
        )
