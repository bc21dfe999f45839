"""The decoder-only language model: embeddings, a stack of blocks, a final norm and the head.

One class covers every seed architecture through `ModelConfig` switches. The model knows nothing
of devices, data, files or distribution; training and parallelism wrap it from outside.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from decoderlm.config import ModelConfig
from decoderlm.errors import DecoderLMError
from decoderlm.model.attention import Attention
from decoderlm.model.cache import KVCache
from decoderlm.model.feedforward import MixtureOfExperts, build_ffn
from decoderlm.model.linear_cross_entropy import linear_cross_entropy
from decoderlm.model.norms import build_norm
from decoderlm.model.positions import LearnedPositions, Rotary, SinusoidalPositions


class Block(nn.Module):
    """Attention then feed-forward, each with a residual. Pre-norm: x + f(norm(x));
    post-norm (original transformer): norm(x + f(x))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.pre_norm = config.pre_norm
        self.attn = Attention(config)
        self.ffn = build_ffn(config)
        self.norm1 = build_norm(config)
        self.norm2 = build_norm(config) if self.ffn is not None else None
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, rotary=None, mask=None, is_causal=False, cache=None, layer=0, start=0):
        """(B, T, C) -> ((B, T, C), MoE balance loss or None)."""
        attend = lambda h: self.drop(self.attn(h, rotary, mask, is_causal, cache, layer, start))  # noqa: E731
        x = x + attend(self.norm1(x)) if self.pre_norm else self.norm1(x + attend(x))
        if self.ffn is None:
            return x, None
        h = self.norm2(x) if self.pre_norm else x
        aux = None
        if isinstance(self.ffn, MixtureOfExperts):
            h, aux = self.ffn(h)
        else:
            h = self.ffn(h)
        x = x + self.drop(h) if self.pre_norm else self.norm2(x + self.drop(h))
        return x, aux


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
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.final_norm = build_norm(config) if config.final_norm else nn.Identity()
        self.lm_head = nn.Linear(C, config.vocab_size, bias=config.lm_head_bias)
        self.reset_parameters()
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight  # one matrix for input and output (GPT-2)

    # -- initialisation ---------------------------------------------------------------------------
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

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, idx, *, attention_mask=None, position_ids=None, cache: KVCache | None = None,
                start: int = 0):
        """idx: (B, T) token ids -> logits (B, T, vocab_size).

        attention_mask: (B, start + T), 1 for real tokens and 0 for (left) padding, covering the
        cached prefix too. cache/start: write keys/values at positions start.. of a KVCache.
        """
        hidden, _ = self.hidden_states(idx, attention_mask=attention_mask, position_ids=position_ids,
                                       cache=cache, start=start)
        return self.lm_head(hidden)

    def loss(self, idx, targets, *, attention_mask=None, ignore_index: int = -100):
        """Next-token cross-entropy (mean over non-ignored targets) plus the weighted MoE balance
        loss. Returns (total loss, cross-entropy)."""
        hidden, aux = self.hidden_states(idx, attention_mask=attention_mask)
        ce = linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), self.lm_head.weight, self.lm_head.bias,
                                  targets.reshape(-1), ignore_index)
        total = ce if aux is None else ce + self.config.moe_aux_loss_coef * aux
        return total, ce

    def hidden_states(self, idx, *, attention_mask=None, position_ids=None, cache=None, start=0):
        """(B, T) -> final hidden states (B, T, C) and the summed MoE balance loss (or None)."""
        B, T = idx.shape
        if cache is not None and cache.static:
            return self._hidden_states_static(idx, attention_mask, position_ids, cache, start)
        end = start + T
        if end > self.config.max_seq_len:
            raise DecoderLMError(f"{end} positions exceed the model's context of {self.config.max_seq_len} tokens")
        if position_ids is None:
            if attention_mask is not None:  # left padding: real tokens count from 0
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, start:end]
            else:
                position_ids = torch.arange(start, end, device=idx.device).unsqueeze(0)

        mask, is_causal = self._mask(T, start, attention_mask, idx.device)
        return self._run_blocks(idx, position_ids, mask, is_causal, cache, start)

    def _hidden_states_static(self, idx, attention_mask, position_ids, cache, start):
        """The same, over a static cache: `start` is a LongTensor and attention covers all cache slots,
        masked to the written ones, so shapes never change between decoding steps (for torch.compile)."""
        T = idx.shape[1]
        query_pos = start + torch.arange(T, device=idx.device)  # (T,)
        if position_ids is None:
            position_ids = query_pos.unsqueeze(0)
        key_pos = torch.arange(cache.max_len, device=idx.device)
        mask = (key_pos.unsqueeze(0) <= query_pos.unsqueeze(1)).view(1, 1, T, -1)  # (1, 1, T, S)
        if attention_mask is not None:  # (B, S): padding over the whole cache length
            own = (key_pos.unsqueeze(0) == query_pos.unsqueeze(1)).view(1, 1, T, -1)
            mask = (mask & attention_mask.bool().view(idx.shape[0], 1, 1, -1)) | own
        return self._run_blocks(idx, position_ids, mask, False, cache, start)

    def _run_blocks(self, idx, position_ids, mask, is_causal, cache, start):
        x = self.tok_emb(idx)  # (B, T, C)
        if self.pos_emb is not None:
            x = x + self.pos_emb(position_ids)
        x = self.drop(x)
        rotary = self.rotary.tables(position_ids, x.dtype) if self.rotary is not None else None

        aux_total = None
        for layer, block in enumerate(self.blocks):
            x, aux = block(x, rotary, mask, is_causal, cache, layer, start)
            if aux is not None:
                aux_total = aux if aux_total is None else aux_total + aux
        return self.final_norm(x), aux_total

    @staticmethod
    def _mask(T: int, start: int, attention_mask, device):
        """Boolean (B, 1, T, S) mask (True = may attend) or None with an is_causal flag.

        Without padding, SDPA's own causal mask serves a fresh sequence and a single new token
        needs none. With padding, every query may at least see itself, so that the rows of pad
        positions are never empty (an empty row would give NaN).
        """
        S = start + T
        if attention_mask is None:
            if start == 0:
                return None, T > 1
            if T == 1:
                return None, False
        query_pos = torch.arange(start, S, device=device).unsqueeze(1)  # (T, 1)
        key_pos = torch.arange(S, device=device).unsqueeze(0)  # (1, S)
        mask = (key_pos <= query_pos).view(1, 1, T, S)
        if attention_mask is not None:
            keys_valid = attention_mask[:, :S].bool().view(-1, 1, 1, S)
            mask = (mask & keys_valid) | (key_pos == query_pos).view(1, 1, T, S)
        return mask, False

    # -- conveniences -----------------------------------------------------------------------------
    def new_cache(self, batch_size: int, max_len: int | None = None, dtype=None, device=None,
                  static: bool = False) -> KVCache:
        p = self.tok_emb.weight
        return KVCache.for_model(self.config, batch_size, max_len, dtype or p.dtype, device or p.device, static)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # parameters() skips the tied duplicate
