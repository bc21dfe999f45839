"""Generation: logits processors, greedy decoding, sampling, beam search, streaming and stopping.

`generate(model, input_ids, max_new_tokens, ...)` works on token ids; `generate_text(lm, prompts, ...)`,
`complete(...)` and `stream_text(...)` on strings (stop strings, decoding). See docs/generation.md.
"""

from decoderlm.generate.api import generate
from decoderlm.generate.decoding import ContextOverflowWarning
from decoderlm.generate.options import GenerationOptions
from decoderlm.generate.processors import (
    apply_repetition_penalty, apply_temperature, min_p_filter, repetition_penalty, sampling_warpers, top_k_filter,
    top_p_filter,
)
from decoderlm.generate.text import Completion, complete, generate_text, stream_text

__all__ = [
    "Completion", "ContextOverflowWarning", "GenerationOptions", "apply_repetition_penalty", "apply_temperature",
    "complete", "generate", "generate_text", "min_p_filter", "repetition_penalty", "sampling_warpers",
    "stream_text", "top_k_filter", "top_p_filter",
]
