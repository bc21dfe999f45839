"""The only two places evaluation calls the model, both through its public interface:
`model(idx) -> logits` for scoring and `decoderlm.generate.generate` for decoding."""

from __future__ import annotations

from typing import Iterator

import torch


def model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def forward_logits(model, idx: torch.Tensor) -> torch.Tensor:
    """(B, T) ids -> float32 logits (B, T, V), with dropout off; the caller's train/eval mode comes back."""
    was_training = model.training
    model.eval()
    try:
        return model(idx.to(model_device(model))).float()
    finally:
        model.train(was_training)


def stream_tokens(model, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, *, eos_token_id,
                  pad_token_id, **sampling) -> Iterator[torch.Tensor]:
    """Each decoding step's (B,) new tokens for left-padded prompts `ids` (B, P) with `mask` (B, P).
    The caller stops early by closing the iterator (rows ended by a stop string)."""
    from decoderlm.generate import generate

    device = model_device(model)
    return generate(model, ids.to(device), max_new_tokens, attention_mask=mask.to(device), stream=True,
                    eos_token_id=eos_token_id, pad_token_id=pad_token_id, **sampling)
