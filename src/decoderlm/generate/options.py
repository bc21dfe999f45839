"""The generation settings, checked once so that bad values become one-line DecoderLMErrors, and
the memory a generation needs, checked before its buffers are allocated."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from decoderlm.errors import DecoderLMError
from decoderlm.memory import require


@dataclass
class GenerationOptions:
    max_new_tokens: int
    temperature: float = 1.0  # 0 = greedy
    top_k: int | None = None  # None or 0 = off
    top_p: float | None = None  # None or 1.0 = off
    min_p: float | None = None  # None or 0 = off
    repetition_penalty: float = 1.0
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False  # beam search: True, False (heuristic) or "never"
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def fill_token_id(self) -> int:
        """What finished rows are padded with: pad, else the first EOS (as transformers does)."""
        if self.pad_token_id is not None:
            return self.pad_token_id
        return self.eos_token_ids[0] if self.eos_token_ids else 0

    def validate(self, vocab_size: int) -> None:
        def check(ok: bool, message: str):
            if not ok:
                raise DecoderLMError(message)

        check(isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 0,
              f"max_new_tokens must be a whole number >= 0, got {self.max_new_tokens}")
        check(_finite(self.temperature) and self.temperature >= 0,
              f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        check(self.top_k is None or (isinstance(self.top_k, int) and self.top_k >= 0),
              f"top_k must be a whole number >= 0 (0 = off), got {self.top_k}")
        check(self.top_p is None or (_finite(self.top_p) and 0 < self.top_p <= 1),
              f"top_p must be in (0, 1], got {self.top_p}")
        check(self.min_p is None or (_finite(self.min_p) and 0 <= self.min_p <= 1),
              f"min_p must be in [0, 1], got {self.min_p}")
        check(_finite(self.repetition_penalty) and self.repetition_penalty > 0,
              f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}")
        # More beams than tokens: at the first step there are not enough continuations to fill them.
        check(isinstance(self.num_beams, int) and 1 <= self.num_beams <= vocab_size,
              f"num_beams must be a whole number from 1 to the vocabulary size ({vocab_size}), got {self.num_beams}")
        check(_finite(self.length_penalty), f"length_penalty must be a finite number, got {self.length_penalty}")
        check(self.early_stopping in (True, False, "never"),
              f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        for name, ids in (("eos_token_id", self.eos_token_ids),
                          ("pad_token_id", () if self.pad_token_id is None else (self.pad_token_id,))):
            check(all(0 <= i < vocab_size for i in ids), f"{name} {ids} is outside the vocabulary (0..{vocab_size - 1})")
        if self.num_beams > 1:
            sampling = self.temperature not in (0, 1.0) or self.top_k or self.min_p or (self.top_p or 1.0) < 1.0
            check(not sampling, "beam search is deterministic: leave temperature, top_k, top_p and min_p unset "
                                "(or use num_beams=1 to sample)")


def decoding_bytes(config, rows: int, prompt_len: int, max_new_tokens: int, element_size: int) -> int:
    """A lower bound on what decoding `rows` sequences allocates: the token buffer (int64), the KV
    cache (keys and values of every layer, up to the context window) and three (rows, vocab) float32
    arrays (the logits, their processed copy, the probabilities or beam scores)."""
    total = prompt_len + max_new_tokens
    window = min(total, config.max_seq_len)
    cache = 2 * config.n_layer * rows * config.n_kv_head * config.head_dim * window * element_size
    return rows * total * 8 + cache + 3 * rows * config.vocab_size * 4


def require_decoding_memory(config, rows: int, prompt_len: int, max_new_tokens: int, dtype: torch.dtype,
                            device, what: str) -> None:
    """Refuse in one line, naming `what` was asked, a generation whose buffers cannot fit."""
    element = torch.empty((), dtype=dtype).element_size()
    require(decoding_bytes(config, rows, prompt_len, max_new_tokens, element),
            f"{what}: {rows:,} sequence{'s' if rows != 1 else ''} of up to {prompt_len + max_new_tokens:,} tokens", device,
            hint="ask for fewer beams, samples or new tokens")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def eos_tuple(eos_token_id) -> tuple[int, ...]:
    """None, an int or a list of ints -> a tuple of ints."""
    if eos_token_id is None:
        return ()
    if isinstance(eos_token_id, int):
        return (eos_token_id,)
    try:
        return tuple(int(i) for i in eos_token_id)
    except (TypeError, ValueError):
        raise DecoderLMError(f"eos_token_id must be an int or a list of ints, got {eos_token_id!r}") from None
