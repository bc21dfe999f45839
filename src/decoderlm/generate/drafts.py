"""Where speculative decoding's guesses come from: a small draft model, or the text itself.

Each source proposes k tokens after the sequence so far, with the distributions it drew them from
(k, V), or None when the guesses are deterministic (prompt lookup: a point mass on each guess).
"""

from __future__ import annotations

import torch

from decoderlm.generate.model_calls import StaticCacheRunner


class DraftModel:
    """A smaller model with the same vocabulary, decoding k tokens ahead over its own static cache."""

    def __init__(self, model, max_len: int, compiled: bool):
        self.runner = StaticCacheRunner(model, max_len, compiled)

    def prefill(self, seq: torch.Tensor) -> None:
        self.runner.prefill(seq[:-1])

    def propose(self, seq: torch.Tensor, k: int, choose) -> tuple[torch.Tensor, torch.Tensor | None]:
        """seq: (n,) the tokens so far. choose(logits (1, V)) -> (token (1,), probs (1, V) or None)."""
        logits = None
        for token in seq[self.runner.filled:]:  # the tokens it has not seen (1 or 2)
            logits = self.runner.step(token)
        tokens, probs = [], []
        for i in range(k):
            token, p = choose(logits)
            tokens.append(token)
            probs.append(p)
            if i < k - 1:
                logits = self.runner.step(token[0])
        drafts = torch.cat(tokens)
        return drafts, None if probs[0] is None else torch.cat(probs)

    def keep(self, n_valid: int) -> None:
        """Forget cached positions from n_valid on (rejected guesses)."""
        self.runner.filled = min(self.runner.filled, n_valid)


class PromptLookup:
    """Guesses by copying: find the latest earlier occurrence of the sequence's last n tokens
    (n = 3, then 2, then 1) and propose what followed it. Written here because it is a few lines
    over a token tensor (transformers has it only inside its own generate loop)."""

    def __init__(self, max_ngram: int = 3):
        self.max_ngram = max_ngram

    def prefill(self, seq: torch.Tensor) -> None:
        pass

    def propose(self, seq: torch.Tensor, k: int, choose=None) -> tuple[torch.Tensor, None]:
        n_tokens = seq.shape[0]
        for n in range(min(self.max_ngram, n_tokens - 1), 0, -1):
            tail = seq[-n:]
            windows = seq[:-1].unfold(0, n, 1)  # (n_tokens - n, n): every earlier n-gram
            hits = (windows == tail).all(dim=1).nonzero().flatten()
            if hits.numel():
                start = int(hits[-1]) + n
                found = seq[start:start + k]
                return _pad(found, k, seq[-1]), None
        return _pad(seq[:0], k, seq[-1]), None

    def keep(self, n_valid: int) -> None:
        pass


def _pad(tokens: torch.Tensor, k: int, filler: torch.Tensor) -> torch.Tensor:
    """Always k guesses, so the verification step keeps one shape; extra guesses are harmless."""
    if tokens.shape[0] >= k:
        return tokens[:k]
    return torch.cat([tokens, filler.expand(k - tokens.shape[0])])
