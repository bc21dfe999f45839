"""Speculative decoding at batch 1: a draft source guesses k tokens, the model checks all of them in
one forward pass over k + 1 positions, and keeps the longest acceptable prefix plus one token of its own.

Greedy: a guess is kept while it equals the model's argmax, so the output is plain greedy decoding's
(up to float rounding at exact near-ties: k + 1 positions at once round differently from one).
Sampling: the standard rule (Leviathan et al. 2023, Chen et al. 2023): keep guess d with probability
min(1, p(d) / q(d)); at the first rejection draw from max(0, p - q), renormalised; if all k are kept,
draw a bonus token from p. The tokens are then distributed exactly as sampling from the model (p after
temperature / top-k / top-p / min-p), whatever the draft. Prompt-lookup guesses are a point mass q.
"""

from __future__ import annotations

from typing import Iterator

import torch

from decoderlm.errors import DecoderLMError
from decoderlm.generate.drafts import DraftModel, PromptLookup
from decoderlm.generate.model_calls import StaticCacheRunner
from decoderlm.generate.options import GenerationOptions
from decoderlm.generate.processors import apply_all, sampling_warpers
from decoderlm.generate.sampling import make_generator

DEFAULT_DRAFT_TOKENS = 4


class _Chooser:
    """Turns logits into the distribution decoding draws from (None when greedy) and draws."""

    def __init__(self, opts: GenerationOptions, vocab_size: int, generator):
        self.greedy = opts.greedy
        self.warpers = [] if self.greedy else sampling_warpers(opts.temperature, opts.top_k, opts.top_p,
                                                               opts.min_p, vocab_size)
        self.generator = generator

    def probs(self, logits: torch.Tensor) -> torch.Tensor | None:
        return None if self.greedy else apply_all(logits, self.warpers).softmax(dim=-1)

    def __call__(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(1, V) logits -> (token (1,), probs (1, V) or None)."""
        if self.greedy:
            return logits.argmax(dim=-1), None
        p = self.probs(logits)
        return torch.multinomial(p, 1, generator=self.generator).view(1), p


def accept(target_logits: torch.Tensor, drafts: torch.Tensor, draft_probs: torch.Tensor | None,
           chooser: _Chooser) -> tuple[int, torch.Tensor]:
    """target_logits (k + 1, V), drafts (k,), draft_probs (k, V) or None (point masses).
    Returns (guesses kept, the model's own next token (1,))."""
    k = drafts.shape[0]
    if chooser.greedy:
        choice = target_logits.argmax(dim=-1)
        kept = int((choice[:k] == drafts).long().cumprod(0).sum())
        return kept, choice[kept:kept + 1]
    p = chooser.probs(target_logits)
    q = draft_probs if draft_probs is not None else torch.nn.functional.one_hot(drafts, p.shape[-1]).to(p.dtype)
    for i in range(k):
        d = drafts[i]
        keep_prob = (p[i, d] / q[i, d]).clamp(max=1.0)
        if torch.rand((), generator=chooser.generator, device=p.device) < keep_prob:
            continue
        residual = (p[i] - q[i]).clamp(min=0)
        if float(residual.sum()) <= 0:  # p == q up to rounding: any draw from p is right
            residual = p[i]
        return i, torch.multinomial(residual, 1, generator=chooser.generator)
    return k, torch.multinomial(p[k], 1, generator=chooser.generator)


def check_speculative(opts: GenerationOptions, batch: int, draft_model, prompt_lookup, model) -> None:
    if draft_model is not None and prompt_lookup:
        raise DecoderLMError("use either a draft model or prompt lookup, not both")
    if batch != 1:
        raise DecoderLMError(f"speculative decoding works on one prompt at a time, got a batch of {batch}")
    if opts.num_beams > 1 or opts.repetition_penalty != 1.0:
        raise DecoderLMError("speculative decoding works with greedy decoding and sampling, "
                             "without beam search or a repetition penalty")
    if prompt_lookup is not None and (not isinstance(prompt_lookup, int) or prompt_lookup < 1):
        raise DecoderLMError(f"prompt lookup proposes N >= 1 tokens per step, got {prompt_lookup!r}")
    if draft_model is not None and draft_model.config.vocab_size != model.config.vocab_size:
        raise DecoderLMError(f"the draft model's vocabulary ({draft_model.config.vocab_size} tokens) differs "
                             f"from the model's ({model.config.vocab_size}); a draft must share the tokenizer")


def speculative_tokens(model, prompt: torch.Tensor, opts: GenerationOptions, *, draft_model=None,
                       prompt_lookup: int | None = None, compiled: bool = False,
                       stop_fn=None) -> Iterator[torch.Tensor]:
    """Yield the new tokens of one prompt (1, P), a round's worth (n,) at a time: handling a round's
    tokens one by one in Python would cost about as much as a step per round."""
    k = prompt_lookup or DEFAULT_DRAFT_TOKENS
    P = prompt.shape[1]
    max_len = speculative_cache_length(model, P, opts.max_new_tokens, prompt_lookup, draft_model)
    seq = torch.empty(P + opts.max_new_tokens + k, dtype=torch.long, device=prompt.device)
    seq[:P] = prompt[0]
    target = StaticCacheRunner(model, max_len, compiled)
    source = DraftModel(draft_model, max_len, compiled) if draft_model is not None else PromptLookup()
    chooser = _Chooser(opts, model.config.vocab_size, make_generator(opts.seed, prompt.device))
    eos = torch.tensor(opts.eos_token_ids, dtype=torch.long, device=prompt.device)
    n = P
    with torch.inference_mode():
        target.prefill(seq[:n - 1])
        source.prefill(seq[:n])
    view = _Generated(seq, P)
    backoff = Backoff()
    while n < P + opts.max_new_tokens:
        with torch.inference_mode():
            proposal = None if backoff.plain_now() else source.propose(seq[:n], k, chooser)
            if proposal is None:  # the last round did not pay, or nothing to guess: one ordinary step
                new = chooser(target.step(seq[n - 1]))[0]
            else:
                drafts, q = proposal
                logits = target.verify(torch.cat([seq[n - 1:n], drafts]))
                kept, own = accept(logits, drafts, q, chooser)
                backoff.after_round(kept, k)
                new = torch.cat([drafts[:kept], own])
                target.filled = n + kept
                source.keep(n + kept)
        new = new[:P + opts.max_new_tokens - n]
        ends = torch.isin(new, eos).nonzero()
        done = bool(ends.numel())
        if done:  # up to the first end-of-sequence token
            new = new[:int(ends[0]) + 1]
        seq[n:n + new.shape[0]] = new
        if stop_fn is not None:  # it judges the text after every token (the view ends there)
            for i in range(new.shape[0]):
                view.length = n + i + 1
                if _stopped(stop_fn(view)):
                    new, done = new[:i + 1], True
                    break
        n += new.shape[0]
        yield new.clone()
        if done:
            return


class Backoff:
    """A verification costs more than a step (several steps' worth on a small model), so a round pays
    only when it keeps enough guesses: at least half of them. After a round that keeps fewer, the
    next 1, 2, 4 ... 16 tokens (doubling while rounds keep failing) are decoded by ordinary steps; a
    round that pays resets it. Text the guesses cannot predict then costs little more than plain
    decoding. (transformers' assisted generation adapts its guess count for the same reason; here the
    verification keeps one shape, so it can stay compiled. The rule counts guesses, not seconds, so a
    seed gives the same text on every run.) Either way each token is drawn as plain decoding draws
    it, so outputs and distributions do not change."""

    LONGEST = 16

    def __init__(self):
        self.length, self.left = 1, 0

    def plain_now(self) -> bool:
        if self.left:
            self.left -= 1
            return True
        return False

    def after_round(self, kept: int, guesses: int) -> None:
        if 2 * kept >= guesses:
            self.length = 1
        else:
            self.left = self.length
            self.length = min(2 * self.length, self.LONGEST)


def speculative_cache_length(model, prompt_len: int, max_new_tokens: int, prompt_lookup, draft_model) -> int:
    """Positions the static caches need (rounded up to 64 so a compiled step serves nearby lengths)."""
    k = prompt_lookup or DEFAULT_DRAFT_TOKENS
    need = prompt_len + max_new_tokens + k
    window = min(model.config.max_seq_len,
                 draft_model.config.max_seq_len if draft_model is not None else model.config.max_seq_len)
    if need > window:
        raise DecoderLMError(f"speculative decoding keeps the whole text in the context window: the prompt "
                             f"({prompt_len}) + max_new_tokens ({max_new_tokens}) + guesses per step ({k}) "
                             f"exceed {window} tokens; shorten them or decode without a draft")
    return min(window, -(-need // 64) * 64)


def _stopped(result) -> bool:
    return result is not None and bool(torch.as_tensor(result).any())


class _Generated:
    """What a stop_fn reads: `generated()` (1, n) tokens so far and `seq` (for its device)."""

    def __init__(self, seq: torch.Tensor, prompt_len: int):
        self.seq, self.prompt_len, self.length = seq.view(1, -1), prompt_len, prompt_len

    def generated(self) -> torch.Tensor:
        return self.seq[:, self.prompt_len:self.length]
