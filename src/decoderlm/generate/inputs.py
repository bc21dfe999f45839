"""What decoding hands the model besides the tokens, and the one output it takes back.

The model's forward takes a ready boolean attention mask and the tokens' positions; building them
from a padding mask and a KV cache's slots is decoding's business, so it lives here:
`causal_mask` (which cached slots each new token may see), `padded_positions` (left padding:
positions count from each row's first real token, as Hugging Face does) and `last_logits`.
"""

from __future__ import annotations

import torch


def causal_mask(T: int, S: int | None = None, start=0, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Bool (1 or B, 1, T, S), True = may attend: the new token at slot start + i sees slots up to
    its own. start may be a tensor (a static cache's length). valid (B, S): 1 for real tokens, 0 for
    padding, to hide the pads; every token still sees itself, so a pad's row is never empty (NaN)."""
    S = T if S is None else S
    device = valid.device if valid is not None else (start.device if torch.is_tensor(start) else None)
    query = (start + torch.arange(T, device=device)).view(T, 1)  # (T, 1) slots of the new tokens
    key = torch.arange(S, device=device).view(1, S)
    mask = (key <= query).view(1, 1, T, S)
    if valid is not None:
        mask = (mask & valid.bool().view(-1, 1, 1, S)) | (key == query).view(1, 1, T, S)
    return mask


def padded_positions(valid: torch.Tensor) -> torch.Tensor:
    """(B, S) padding mask (1 = real token) -> (B, S) positions: each real token's index among its
    row's real tokens (pads get 0; the mask hides them)."""
    return (valid.long().cumsum(-1) - 1).clamp(min=0)


def last_logits(model, tokens: torch.Tensor, **inputs) -> torch.Tensor:
    """float32 logits (B, V) that follow the last of `tokens` (B, T); `inputs` go to the model."""
    return model(tokens, logits_to_keep=1, **inputs)[:, -1].float()
