"""One new token's attention over a KV cache, in bf16/fp16 on CPU.

torch's CPU flash-attention kernel is several times slower in reduced precision for a single query
row than for two or more (docs/generation.md has the timings), and a decoding step asks exactly one
row per head. So the row count is raised without extra work where the model allows: the G query
heads that share one key/value head (grouped or multi-query attention) become G rows of that head,
the layout flash-decoding uses; with as many key/value heads as query heads the query is repeated
and the first row kept. The result is the same attention (up to rounding).

In bf16, where decoderlm's C++ kernels are loaded (native.py), its own kernel does the step instead:
it reads only the cache slots the mask shows (a static cache is longer than the text in it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from decoderlm.kernels import native


def use_single_query_layout(q: torch.Tensor, training: bool) -> bool:
    """Inference with one query per head (a decoding step), in reduced precision, on CPU."""
    return (not training and q.shape[2] == 1 and q.device.type == "cpu"
            and q.dtype in (torch.bfloat16, torch.float16))


def single_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask) -> torch.Tensor:
    """q (B, H, 1, D); k, v (B, Hkv, S, D); mask broadcastable to (B, 1, 1, S) or None (every key
    visible) -> (B, H, 1, D)."""
    B, H, _, D = q.shape
    if native.attention_usable(q, k, v, mask):  # decoderlm's kernel: only the visible slots are read
        S = k.shape[2]
        visible = torch.ones(B, S, dtype=torch.bool) if mask is None else mask.expand(B, 1, 1, S).reshape(B, S)
        return torch.ops.decoderlm.decoding_attention(q.contiguous(), k, v, visible.contiguous())
    groups = H // k.shape[1]
    if groups > 1:  # rows of one key/value head: each row is one of its query heads
        out = F.scaled_dot_product_attention(q.reshape(B, k.shape[1], groups, D), k, v, attn_mask=mask)
        return out.reshape(B, H, 1, D)
    return F.scaled_dot_product_attention(q.expand(B, H, 2, D), k, v, attn_mask=mask)[:, :, :1]
