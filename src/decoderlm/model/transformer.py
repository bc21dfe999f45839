"""The decoder-only language model: embeddings, a stack of blocks, a final norm and the head.

One class covers every seed architecture through `ModelConfig` switches. The model is plain
PyTorch and knows nothing of devices, data, files or distribution; training wraps it from outside
(decoderlm.kernels swaps in faster layers, decoderlm.train.distributed shards it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from decoderlm.config import ModelConfig
from decoderlm.errors import DecoderLMError
from decoderlm.model.attention import Attention
from decoderlm.model.cache import KVCache
from decoderlm.model.feedforward import build_ffn
from decoderlm.model.positions import LearnedPositions, Rotary, SinusoidalPositions

IGNORE_INDEX = -100  # targets with this value add nothing to the loss (F.cross_entropy's default)


def build_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.d_model, eps=config.norm_eps)
    if config.norm == "layernorm":
        return nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.norm_bias)
    return nn.Identity()


class Block(nn.Module):
    """Attention then feed-forward (if any), each with a residual connection."""

    def __init__(self, config: ModelConfig, layer_index: int = 0):
        super().__init__()
        self.pre_norm = config.pre_norm
        self.attn = Attention(config, layer_index)
        self.ffn = build_ffn(config)  # None: attention only (the toy)
        self.norm1 = build_norm(config)
        self.norm2 = build_norm(config) if self.ffn is not None else None
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, rope=None, mask=None, cache=None):  # (B, T, C) -> (B, T, C)
        if self.pre_norm:  # x + f(norm(x)): GPT-2, Llama
            x = x + self.drop(self.attn(self.norm1(x), rope, mask, cache))
            if self.ffn is not None:
                x = x + self.drop(self.ffn(self.norm2(x)))
        else:  # norm(x + f(x)): the original transformer
            x = self.norm1(x + self.drop(self.attn(x, rope, mask, cache)))
            if self.ffn is not None:
                x = self.norm2(x + self.drop(self.ffn(x)))
        return x


class Head(nn.Linear):
    """The output layer, (B, T, C) -> logits (B, T, vocab_size), and the loss on those logits."""

    def loss(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the targets that are not IGNORE_INDEX, in float32
        (0, not NaN, when every target is ignored)."""
        logits = self(x).float().flatten(0, 1)
        targets = targets.flatten()
        total = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")
        return total / (targets != IGNORE_INDEX).sum().clamp(min=1)


class DecoderLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        C = config.d_model
        self.tok_emb = nn.Embedding(config.vocab_size, C)
        self.pos_emb = {
            "learned": lambda: LearnedPositions(config.max_seq_len, C),
            "sinusoidal": lambda: SinusoidalPositions(config.max_seq_len, C),
        }.get(config.position, lambda: None)()
        self.rotary = (Rotary(config.head_dim, config.max_seq_len, config.rope_theta)
                       if config.position == "rope" else None)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.final_norm = build_norm(config) if config.final_norm else nn.Identity()
        self.lm_head = Head(C, config.vocab_size, bias=config.lm_head_bias)
        self.reset_parameters()
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight  # one matrix for input and output (GPT-2)

    @torch.no_grad()
    def reset_parameters(self):
        """GPT-2 initialisation: N(0, init_std) weights, zero biases, unit norms, and the projections
        that write into the residual stream scaled by 1/sqrt(2 * n_layer)."""
        std = self.config.init_std
        residual_std = std / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() == 1:  # norm weights
                nn.init.ones_(p)
            elif name.endswith(("attn.proj.weight", "ffn.down.weight", "ffn.down", "shared.down.weight")):
                nn.init.normal_(p, 0.0, residual_std)
            else:
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx, targets=None, *, cache: KVCache | None = None, positions=None, attention_mask=None,
                logits_to_keep: int = 0):
        """idx (B, T) token ids -> logits (B, T, vocab_size); with targets (B, T), the training loss
        instead: mean cross-entropy (IGNORE_INDEX targets left out) plus `aux_loss()`.

        cache: a KVCache; these tokens' keys and values go into its next slots.
        positions: (B, T) or (1, T) position of each token; default: counting on from the cache.
        attention_mask: bool, broadcastable to (B, 1, T, S) over the S keys (cached ones first),
        True = may attend. None: causal. decoderlm.generate.inputs builds the masks decoding needs.
        logits_to_keep: logits of the last this many positions only (0: all), as in transformers;
        decoding a prompt needs only the last position's, and the output layer is a large share of a
        small model's work. Not with targets (the loss needs every position).
        """
        T = idx.shape[1]
        if logits_to_keep < 0 or (logits_to_keep and targets is not None):
            raise ValueError(f"logits_to_keep must be >= 0 and without targets, got {logits_to_keep}")
        start = cache.length if cache is not None else 0
        self._check_inputs(T, start, cache, attention_mask)
        if positions is None:
            positions = (start + torch.arange(T, device=idx.device)).unsqueeze(0)  # (1, T)
        x = self.tok_emb(idx)  # (B, T, C)
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        x = self.drop(x)
        rope = self.rotary(positions) if self.rotary is not None else None
        for block in self.blocks:
            x = block(x, rope, attention_mask, cache)
        if cache is not None:
            cache.advance(T)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        x = self.final_norm(x)
        if targets is None:
            return self.lm_head(x)
        return self.lm_head.loss(x, targets) + self.aux_loss()

    def aux_loss(self):
        """moe_aux_loss_coef x the sum of the MoE layers' balance losses from the last forward
        (0.0 without experts). The training loss is the cross-entropy plus this."""
        losses = [getattr(block.ffn, "balance_loss", None) for block in self.blocks]
        losses = [loss for loss in losses if loss is not None]
        return self.config.moe_aux_loss_coef * sum(losses) if losses else 0.0

    def _check_inputs(self, T: int, start, cache, attention_mask) -> None:
        static = cache is not None and cache.static
        if not static and start + T > self.config.max_seq_len:
            raise DecoderLMError(f"{start + T} positions exceed the model's context of "
                                 f"{self.config.max_seq_len} tokens")
        if attention_mask is None and (static or (T > 1 and start > 0)):
            raise ValueError("new tokens after cached ones need an attention_mask "
                             "(decoderlm.generate.inputs.causal_mask)")
        if attention_mask is not None and attention_mask.dtype != torch.bool:
            raise ValueError(f"attention_mask must be boolean (True = may attend), got {attention_mask.dtype}; "
                             "decoderlm.generate.inputs.causal_mask turns a padding mask into one")

    def new_cache(self, batch_size: int, max_len: int | None = None, dtype=None, device=None,
                  static: bool = False) -> KVCache:
        p = self.tok_emb.weight
        return KVCache.for_model(self.config, batch_size, max_len, dtype or p.dtype, device or p.device, static)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # parameters() skips the tied duplicate
