"""The model and KV-cache calls of speculative decoding, in one place.

A `StaticCacheRunner` feeds one sequence (batch 1) through a model over a static KV cache: writes go
to the slots from the cache's length on, and attention sees the slots up to each query's own, so
forgetting rejected guesses is only lowering `filled` (the cache's length; the next write overwrites
them). The one-token step and the (k + 1)-token verification have fixed shapes and can be compiled
(`compiled=True`).
"""

from __future__ import annotations

import torch

from decoderlm.generate.compiled import _decode_step
from decoderlm.generate.inputs import causal_mask


def verify_logits(model, tokens, cache):
    """(1, T) tokens into the next slots of a static `cache` -> float32 logits (T, V) at every position."""
    mask = causal_mask(tokens.shape[1], cache.max_len, cache.length)
    return model(tokens, cache=cache, attention_mask=mask)[0].float()


class StaticCacheRunner:
    def __init__(self, model, max_len: int, compiled: bool):
        self.model = model
        self.cache = model.new_cache(1, max_len, static=True)
        self.compiled = compiled
        self._calls: dict[str, object] = {}  # "step 1" / "verify T" -> the call, made at its first use

    @property
    def filled(self) -> int:
        """Slots 0..filled-1 hold keys/values of the final text."""
        return int(self.cache.length)

    @filled.setter
    def filled(self, n: int) -> None:
        # A fresh tensor (not an in-place write): the cache's length may come from inference mode.
        self.cache.length = torch.tensor(n, dtype=torch.long, device=self.cache.device)

    def prefill(self, tokens: torch.Tensor) -> None:
        """(n,) tokens at positions 0..n-1 of the empty cache (eager: prompts differ in length; through
        a growing view of the cache, so that they attend over their own slots only)."""
        if tokens.shape[0]:
            self.model(tokens.view(1, -1), cache=self.cache.growing_view(), logits_to_keep=1)

    def extend(self, tokens: torch.Tensor) -> None:
        """(n,) tokens at positions filled.. in one eager call (their count varies), logits unused."""
        mask = causal_mask(tokens.shape[0], self.cache.max_len, self.cache.length)
        self.model(tokens.view(1, -1), cache=self.cache, attention_mask=mask, logits_to_keep=1)

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """One token (a 0-d tensor) at position `filled` -> float32 logits (1, V) of the next one."""
        token = token.reshape(1, 1).clone(memory_format=torch.contiguous_format)
        call, repeat = self._call("step", 1)
        # a compiled graph may reuse its output buffer: copy
        return call(token, self.cache, None, None, repeat=repeat).clone()

    def verify(self, tokens: torch.Tensor) -> torch.Tensor:
        """(T,) tokens at positions filled.. -> float32 logits (T, V), each for the token after it."""
        call, repeat = self._call("verify", tokens.shape[0])
        tokens = tokens.view(1, -1).clone(memory_format=torch.contiguous_format)
        return call(tokens, self.cache, repeat=repeat).clone()

    def _call(self, kind: str, tokens: int):
        """(the model call `kind` for `tokens` new tokens, whether it ran before with these shapes)."""
        name = f"{kind} {tokens}"
        if name in self._calls:
            return self._calls[name], True
        if self.compiled:
            from decoderlm.generate.packaged import compiled_call

            call = compiled_call(self.model, 1, self.cache.max_len, kind=kind, tokens=tokens)
        else:
            fn = _decode_step if kind == "step" else verify_logits
            call = lambda *args, repeat: fn(self.model, *args)  # noqa: E731
        self._calls[name] = call
        return call, False
