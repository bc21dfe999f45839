"""Logits processors: small functions from (B, V) logits to (B, V) logits.

Each one matches its transformers counterpart (TemperatureLogitsWarper, TopKLogitsWarper,
TopPLogitsWarper, MinPLogitsWarper, RepetitionPenaltyLogitsProcessor) so that the same settings
give the same distribution; the tests compare them on random logits. Filtered entries become -inf.
They are written here rather than imported so that the core does not need transformers.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch

Processor = Callable[[torch.Tensor], torch.Tensor]


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide by the temperature: below 1 sharpens the distribution, above 1 flattens it."""
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Keep the k largest logits of each row (ties with the k-th are kept too)."""
    k = min(max(k, min_tokens_to_keep), logits.shape[-1])
    kth_largest = torch.topk(logits, k).values[..., -1:]
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Nucleus sampling: keep the smallest set of most probable tokens whose probability reaches p.

    Sorted ascending, a token is dropped when the mass of itself and everything less likely stays
    at or below 1 - p; the most likely `min_tokens_to_keep` tokens always stay.
    """
    sorted_logits, sorted_index = torch.sort(logits, descending=False)
    mass_up_to = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = mass_up_to <= (1 - p)
    drop_sorted[..., -min_tokens_to_keep:] = False
    drop = drop_sorted.scatter(-1, sorted_index, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def min_p_filter(logits: torch.Tensor, min_p: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Keep tokens whose probability is at least min_p times the most likely token's probability."""
    probs = logits.softmax(dim=-1)
    drop = probs < min_p * probs.amax(dim=-1, keepdim=True)
    keep = torch.topk(probs, min(min_tokens_to_keep, probs.shape[-1]), dim=-1).indices
    drop.scatter_(-1, keep, False)
    return logits.masked_fill(drop, float("-inf"))


def seen_tokens(token_ids: torch.Tensor, vocab_size: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """(B, L) ids -> (B, V + 1) bool "this id occurs in the row". Positions where `valid` is False
    (left padding) are sent to the spare last column, which the penalty ignores."""
    if valid is not None:
        token_ids = token_ids.masked_fill(~valid.bool(), vocab_size)
    seen = torch.zeros(token_ids.shape[0], vocab_size + 1, dtype=torch.bool, device=token_ids.device)
    return seen.scatter_(1, token_ids.clamp(max=vocab_size), True)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty, once per distinct token already present: positive logits are divided by the
    penalty and negative ones multiplied, so a penalty above 1 always makes the token less likely."""
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen[:, : logits.shape[-1]], penalised, logits)


def repetition_penalty(logits: torch.Tensor, token_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """The penalty given the previous token ids (B, L) instead of a `seen` mask."""
    return apply_repetition_penalty(logits, seen_tokens(token_ids, logits.shape[-1]), penalty)


def sampling_warpers(temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                     min_p: float | None = None, vocab_size: int | None = None,
                     min_tokens_to_keep: int = 1) -> list[Processor]:
    """The warpers that shape the sampling distribution, in transformers' order (temperature, top-k,
    top-p, min-p). Settings that change nothing (temperature 1, top_k 0 or >= vocab, top_p 1,
    min_p 0) are left out, so they cost nothing."""
    warpers: list[Processor] = []
    if temperature != 1.0:
        warpers.append(partial(apply_temperature, temperature=temperature))
    if top_k and (vocab_size is None or top_k < vocab_size):
        warpers.append(partial(top_k_filter, k=top_k, min_tokens_to_keep=min_tokens_to_keep))
    if top_p is not None and top_p < 1.0:
        warpers.append(partial(top_p_filter, p=top_p, min_tokens_to_keep=min_tokens_to_keep))
    if min_p:
        warpers.append(partial(min_p_filter, min_p=min_p, min_tokens_to_keep=min_tokens_to_keep))
    return warpers


def apply_all(logits: torch.Tensor, processors: list[Processor]) -> torch.Tensor:
    for process in processors:
        logits = process(logits)
    return logits
