"""The sequences being generated and the model calls that extend them, through a preallocated KV cache.

`Sequences` owns the token buffer (B, prompt + new), the padding mask and the cache. The prompt is
run once (prefill); after that each call feeds only the newest token. When the sequences outgrow the
model's window, the visible context is cropped and the cache recomputed (see `Sequences._crop`).
"""

from __future__ import annotations

import warnings

import torch

from decoderlm.errors import DecoderLMError
from decoderlm.generate.defaults import static_cache_length
from decoderlm.generate.inputs import causal_mask, last_logits, padded_positions


class ContextOverflowWarning(UserWarning):
    """Generation went past the model's context window, so the oldest tokens were dropped."""


class Sequences:
    def __init__(self, model, prompt: torch.Tensor, valid: torch.Tensor | None, max_new_tokens: int,
                 compiled: bool = False):
        """prompt: (B, P) ids; valid: (B, P) 1 for real tokens, 0 for left padding, or None.
        compiled: decode through the compiled one-token step over a static cache."""
        B, P = prompt.shape
        self.model, self.prompt_len = model, P
        self.window = model.config.max_seq_len
        # Learned or sinusoidal positions are absolute, so past the window every step must see the last
        # `window` tokens afresh (as the seed's nanoGPT-style loop does). Rotary positions are relative:
        # the cache keeps going to the window, then the oldest quarter is dropped and the rest recomputed.
        self.slide = model.config.position != "rope"
        self.seq = torch.empty(B, P + max_new_tokens, dtype=torch.long, device=prompt.device)
        self.seq[:, :P] = prompt
        self.valid = None
        if valid is not None and not bool(valid.all()):
            self.valid = torch.ones(B, P + max_new_tokens, dtype=torch.bool, device=prompt.device)
            self.valid[:, :P] = valid.bool()
        self.length = P  # tokens in seq
        self.offset = 0  # seq[:, offset:] is what the model sees (the context after cropping)
        self.filled = 0  # how many of those are in the cache (its length, as a Python int)
        # A compiled step's graph depends on the cache length: round it up so nearby lengths share one.
        cache_len = static_cache_length(self.window, P + max_new_tokens) if compiled else \
            min(self.window, P + max_new_tokens)
        self.cache = model.new_cache(B, cache_len, static=compiled)
        self.step = None
        self.stepped = False  # the compiled step ran once: later calls have the same shapes
        if compiled:
            from decoderlm.generate.packaged import compiled_call

            self.step = compiled_call(model, B, cache_len, padded=self.valid is not None)
        self.next_pos = None  # (B, 1) position of the next token when there is padding
        self.warned = False

    @property
    def batch_size(self) -> int:
        return self.seq.shape[0]

    def append(self, tokens: torch.Tensor) -> None:
        """Write the next token (B,) of every row."""
        self.seq[:, self.length] = tokens
        self.length += 1

    def generated(self) -> torch.Tensor:
        return self.seq[:, self.prompt_len:self.length]

    def all_tokens(self) -> torch.Tensor:
        return self.seq[:, :self.length]

    def reorder(self, index: torch.Tensor) -> None:
        """Beam search: row i becomes old row index[i] (tokens, mask, cache, positions)."""
        self.seq = self.seq.index_select(0, index)
        if self.valid is not None:
            self.valid = self.valid.index_select(0, index)
        if self.next_pos is not None:
            self.next_pos = self.next_pos.index_select(0, index)
        self.cache.reorder(index)

    def next_logits(self) -> torch.Tensor:
        """float32 logits (B, V) for the token after seq[:, :length]."""
        if self.length - self.offset > self.cache.max_len:
            self._crop()
        if self.filled == 0:
            return self._prefill()
        if self.length - self.offset - self.filled != 1:
            raise RuntimeError("append exactly one token between next_logits calls")
        return self._decode_one()

    def _crop(self) -> None:
        keep = self.window
        if self.filled and not self.slide:
            keep = max(1, self.window - max(1, self.window // 4))
        self.offset = self.length - keep
        self.filled = 0
        self.cache.reset()
        if not self.warned:
            self.warned = True
            how = ("the context slides: each new token is predicted from the last "
                   f"{self.window} tokens (recomputed)") if self.slide else \
                  (f"the oldest tokens were dropped, keeping the last {keep}, and the cache recomputed")
            warnings.warn(f"the sequence outgrew the model's context window of {self.window} tokens; {how}",
                          ContextOverflowWarning, stacklevel=4)

    def _prefill(self) -> torch.Tensor:
        tokens = self.seq[:, self.offset:self.length]
        T = tokens.shape[1]
        valid = None if self.valid is None else self.valid[:, self.offset:self.length]
        positions = None if valid is None else padded_positions(valid)
        mask = None if valid is None else causal_mask(T, valid=valid)
        # A static cache is written through a growing view of it: the prompt attends over its own slots.
        cache = self.cache.growing_view() if self.cache.static else self.cache
        logits = last_logits(self.model, tokens, cache=cache, positions=positions, attention_mask=mask)
        self.filled = T
        if valid is not None:
            self.next_pos = valid.long().sum(-1, keepdim=True)  # left padding: real tokens count from 0
        return logits

    def _static_valid(self) -> torch.Tensor | None:
        """The padding mask over every slot of the static cache (slots past the text count as real;
        causality hides them until they are written)."""
        if self.valid is None:
            return None
        visible = self.valid[:, self.offset:self.offset + self.cache.max_len]
        valid = torch.ones(self.batch_size, self.cache.max_len, dtype=torch.bool, device=visible.device)
        valid[:, :visible.shape[1]] = visible
        return valid

    def _decode_one(self) -> torch.Tensor:
        token = self.seq[:, self.length - 1:self.length]  # (B, 1)
        if self.step is not None:
            # A fresh (B, 1) tensor: the view's strides depend on the generation's length, and the
            # compiled step's guards would recompile for every new length.
            token = token.clone(memory_format=torch.contiguous_format)
            # the compiled graph may reuse its output buffer: copy
            logits = self.step(token, self.cache, self._static_valid(), self.next_pos,
                               repeat=self.stepped).clone()
            self.stepped = True
        else:
            mask = None
            if self.valid is not None:
                mask = causal_mask(1, self.filled + 1, self.filled, self.valid[:, self.offset:self.length])
            logits = last_logits(self.model, token, cache=self.cache, positions=self.next_pos, attention_mask=mask)
        self.filled += 1
        if self.next_pos is not None:
            self.next_pos = self.next_pos + 1
        return logits


def as_prompt(input_ids, attention_mask, eos_token_ids, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Normalise the prompt to a (B, P) LongTensor plus an optional (B, P) mask; an empty prompt
    starts from the first EOS token (the "beginning of text" of models without a BOS)."""
    ids = torch.as_tensor(input_ids, dtype=torch.long, device=device)
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    if ids.dim() != 2 or ids.shape[0] == 0:
        raise DecoderLMError(f"input_ids must be (batch, length) token ids, got shape {tuple(ids.shape)}")
    mask = None
    if attention_mask is not None:
        mask = torch.as_tensor(attention_mask, device=device)
        if mask.dim() == 1:
            mask = mask.unsqueeze(0)
        if mask.shape != ids.shape:
            raise DecoderLMError(f"attention_mask shape {tuple(mask.shape)} differs from input_ids {tuple(ids.shape)}")
    if ids.shape[1] == 0:
        if not eos_token_ids:
            raise DecoderLMError("empty prompt: give at least one token, or an eos_token_id to start from")
        ids = torch.full((ids.shape[0], 1), eos_token_ids[0], dtype=torch.long, device=device)
        mask = None
    elif mask is not None and not bool(mask.bool().any(-1).all()):
        raise DecoderLMError("a prompt row is all padding: every row needs at least one real token")
    return ids, mask
