"""Each request's own sampling: its processors, its random generator, its repetition memory.

A row of the batch chooses its token from its own logits with its own `torch.Generator`, so what it
draws does not depend on which other requests share the batch, and a seed reproduces a completion.
The draw is `decoderlm.generate`'s (the same processors, then `torch.multinomial` on one row), so a
seeded request samples what `decoderlm generate --seed` samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from decoderlm.generate import apply_repetition_penalty, sampling_warpers
from decoderlm.generate.processors import apply_all, seen_tokens

# Below this temperature a draw is an argmax in all but name, and dividing by it can overflow the
# logits to inf (then NaN): treat it as greedy, as vLLM does.
GREEDY_BELOW = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0
    seed: int | None = None  # None: a fresh random seed
    logprobs: int | None = None  # None: none; k: the chosen token's log-probability and the k most likely


@dataclass
class TokenChoice:
    id: int
    logprob: float | None = None
    top: list[tuple[int, float]] = field(default_factory=list)  # (id, logprob), most likely first


class RowSampler:
    def __init__(self, params: SamplingParams, prompt_ids: list[int], vocab_size: int, device: torch.device):
        self.params = params
        self.greedy = params.temperature < GREEDY_BELOW
        self.warpers = [] if self.greedy else sampling_warpers(
            params.temperature, params.top_k, params.top_p, params.min_p, vocab_size)
        self.seen = None
        if params.repetition_penalty != 1.0:
            self.seen = seen_tokens(torch.tensor([prompt_ids], device=device), vocab_size)
        self.generator = torch.Generator(device=device)
        if params.seed is None:
            self.generator.seed()  # non-deterministic
        else:
            self.generator.manual_seed(params.seed)

    def choose(self, logits: torch.Tensor) -> TokenChoice:
        """(1, V) float32 logits -> the next token (with log-probabilities if asked for)."""
        scores = logits
        if self.seen is not None:
            scores = apply_repetition_penalty(scores, self.seen, self.params.repetition_penalty)
        if self.greedy:
            token = int(scores.argmax(dim=-1))
        else:
            probs = apply_all(scores, self.warpers).softmax(dim=-1)
            token = int(torch.multinomial(probs, 1, generator=self.generator))
        if self.seen is not None:
            self.seen[0, token] = True
        return self._with_logprobs(token, logits)

    def _with_logprobs(self, token: int, logits: torch.Tensor) -> TokenChoice:
        """The model's own log-probabilities (before the penalty, temperature and filters)."""
        if self.params.logprobs is None:
            return TokenChoice(token)
        logprobs = torch.log_softmax(logits[0], dim=-1)
        top = []
        if self.params.logprobs > 0:
            values, ids = torch.topk(logprobs, min(self.params.logprobs, logprobs.shape[-1]))
            top = list(zip(ids.tolist(), values.tolist()))
        return TokenChoice(token, float(logprobs[token]), top)
