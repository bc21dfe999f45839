"""Generation: logits processors, greedy decoding, sampling, beam search, streaming and stopping.

`generate(model, input_ids, max_new_tokens, ...)` works on token ids; `generate_text(lm, prompts, ...)`
on strings (stop strings, decoding). See docs/generation.md.
"""

from decoderlm.generate.api import generate
from decoderlm.generate.decoding import ContextOverflowWarning
from decoderlm.generate.options import GenerationOptions
from decoderlm.generate.processors import (
    apply_repetition_penalty, apply_temperature, min_p_filter, repetition_penalty, sampling_warpers, top_k_filter,
    top_p_filter,
)

__all__ = [
    "ContextOverflowWarning", "GenerationOptions", "apply_repetition_penalty", "apply_temperature", "generate",
    "min_p_filter", "repetition_penalty", "sampling_warpers", "top_k_filter", "top_p_filter",
]
