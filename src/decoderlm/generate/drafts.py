"""Where speculative decoding's guesses come from: a small draft model, or the text itself.

Each source proposes k tokens after the sequence so far, with the distributions it drew them from
(k, V), or None when the guesses are deterministic (prompt lookup: a point mass on each guess);
prompt lookup proposes nothing (None) when the text gives it nothing to copy.
"""

from __future__ import annotations

import torch

from decoderlm.generate.model_calls import StaticCacheRunner


# After a round the draft has 1 or 2 tokens to read, which its (compiled) step does faster than one
# eager call; after the back-off's ordinary steps it has more, and stepping through each would cost
# most of a model's step per token, so those go in one call.
STEP_THROUGH_AT_MOST = 2


class DraftModel:
    """A smaller model with the same vocabulary, decoding k tokens ahead over its own static cache."""

    def __init__(self, model, max_len: int, compiled: bool):
        self.runner = StaticCacheRunner(model, max_len, compiled)

    def prefill(self, seq: torch.Tensor) -> None:
        self.runner.prefill(seq[:-1])

    def propose(self, seq: torch.Tensor, k: int, choose) -> tuple[torch.Tensor, torch.Tensor | None]:
        """seq: (n,) the tokens so far. choose(logits (1, V)) -> (token (1,), probs (1, V) or None)."""
        unseen = seq[self.runner.filled:]  # never empty: keep() leaves at most n - 1 filled
        if unseen.shape[0] > STEP_THROUGH_AT_MOST:  # one call for all but the last, not a step each
            self.runner.extend(unseen[:-1])
            unseen = unseen[-1:]
        for token in unseen:
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
    """Guesses by copying: find the latest earlier occurrence of the sequence's last `ngram` tokens
    and propose what followed it; no occurrence, no guess (the caller takes an ordinary step). A
    verification costs several steps on a small model, and a match of one or two tokens (a colon and
    a line break) is weak evidence that a copy follows; docs/benchmarks.md compares the lengths.
    Written here because it is a few lines over a token tensor (transformers has it only inside its
    own generate loop)."""

    def __init__(self, ngram: int = 3):
        self.ngram = ngram

    def prefill(self, seq: torch.Tensor) -> None:
        pass

    def propose(self, seq: torch.Tensor, k: int, choose=None) -> tuple[torch.Tensor, None] | None:
        n = self.ngram
        if seq.shape[0] <= n:
            return None
        windows = seq[:-1].unfold(0, n, 1)  # (n_tokens - n, n): every earlier n-gram
        hits = (windows == seq[-n:]).all(dim=1).nonzero().flatten()
        if not hits.numel():
            return None
        start = int(hits[-1]) + n
        return _pad(seq[start:start + k], k, seq[-1]), None

    def keep(self, n_valid: int) -> None:
        pass


def _pad(tokens: torch.Tensor, k: int, filler: torch.Tensor) -> torch.Tensor:
    """Always k guesses, so the verification step keeps one shape; extra guesses are harmless."""
    if tokens.shape[0] >= k:
        return tokens[:k]
    return torch.cat([tokens, filler.expand(k - tokens.shape[0])])
