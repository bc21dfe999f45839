"""The model and KV-cache calls of speculative decoding, in one place.

A `StaticCacheRunner` feeds one sequence (batch 1) through a model over a static KV cache: writes go
to explicit positions, and attention sees the slots up to each query's position, so forgetting
rejected guesses is only lowering `filled` (the next write overwrites them). The one-token step and
the (k + 1)-token verification have fixed shapes and can be compiled (`compiled=True`).
"""

from __future__ import annotations

import torch

from decoderlm.generate.compiled import _decode_step, compiled_step


def verify_logits(model, tokens, start, cache):
    """(1, T) tokens at positions start.. (a tensor) -> float32 logits (T, V) at every position."""
    hidden, _ = model.hidden_states(tokens, cache=cache, start=start)
    return model.lm_head(hidden[0]).float()


class StaticCacheRunner:
    def __init__(self, model, max_len: int, compiled: bool):
        self.model = model
        self.cache = model.new_cache(1, max_len, static=True)
        self.filled = 0  # positions 0..filled-1 hold keys/values of the final text
        self.device = model.tok_emb.weight.device
        self._step = compiled_step(model) if compiled else (lambda *args: _decode_step(model, *args))
        self._verify = compiled_step(model, verify_logits) if compiled else (lambda *a: verify_logits(model, *a))

    def _start(self) -> torch.Tensor:
        return torch.tensor(self.filled, device=self.device)

    def prefill(self, tokens: torch.Tensor) -> None:
        """(n,) tokens at positions 0..n-1 (eager: prompts differ in length)."""
        if tokens.shape[0]:
            verify_logits(self.model, tokens.view(1, -1), self._start(), self.cache)
            self.filled = tokens.shape[0]

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """One token (a 0-d tensor) at position `filled` -> float32 logits (1, V) of the next one."""
        logits = self._step(token.view(1, 1), self._start(), self.cache, None, None)
        self.filled += 1
        return logits.clone()  # a compiled graph may reuse its output buffer

    def verify(self, tokens: torch.Tensor) -> torch.Tensor:
        """(T,) tokens at positions filled.. -> float32 logits (T, V), each for the token after it."""
        logits = self._verify(tokens.view(1, -1), self._start(), self.cache)
        self.filled += tokens.shape[0]
        return logits.clone()
