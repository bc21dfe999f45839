"""Greedy decoding and sampling, one token per step, each row stopping on its own EOS.

Rows that have finished keep receiving the fill token (pad, else EOS), as in transformers, so the
batch stays rectangular. The only host synchronisation per step is the "all finished?" check, and
on accelerators it runs every few steps only (the extra steps are trimmed afterwards).
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from decoderlm.generate.decoding import Sequences
from decoderlm.generate.options import GenerationOptions
from decoderlm.generate.processors import apply_all, apply_repetition_penalty, sampling_warpers, seen_tokens

StopFn = Callable[[Sequences], "torch.Tensor | None"]


def make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    """A generator on the tensors' device, seeded; None means torch's global random state."""
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(seed)


class TokenSampler:
    """Chooses each row's next token from its logits: processors, then argmax or a draw."""

    def __init__(self, opts: GenerationOptions, seqs: Sequences, vocab_size: int):
        self.opts = opts
        self.greedy = opts.greedy
        self.warpers = [] if self.greedy else sampling_warpers(
            opts.temperature, opts.top_k, opts.top_p, opts.min_p, vocab_size)
        self.seen = None
        if opts.repetition_penalty != 1.0:
            self.seen = seen_tokens(seqs.all_tokens(), vocab_size,
                                    None if seqs.valid is None else seqs.valid[:, :seqs.length])
        self.generator = make_generator(opts.seed, seqs.seq.device)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, V) float32 logits -> (B,) token ids."""
        if self.seen is not None:
            logits = apply_repetition_penalty(logits, self.seen, self.opts.repetition_penalty)
        if self.greedy:
            return logits.argmax(dim=-1)
        probs = apply_all(logits, self.warpers).softmax(dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(1)

    def saw(self, tokens: torch.Tensor) -> None:
        if self.seen is not None:
            self.seen[torch.arange(tokens.shape[0], device=tokens.device), tokens] = True


def sample_steps(seqs: Sequences, opts: GenerationOptions, vocab_size: int, *, stop_fn: StopFn | None = None,
                 check_every: int = 1) -> Iterator[torch.Tensor]:
    """Extend `seqs` by up to opts.max_new_tokens tokens, yielding each step's (B,) tokens.

    A finished row (it produced an EOS, or `stop_fn` said so) gets the fill token from then on.
    Generation ends when every row has finished, checked every `check_every` steps; the extra steps
    are dropped from `seqs` (so the result has the same length as checking every step), but they
    have already been yielded, so streaming callers should use check_every=1.
    """
    sampler = TokenSampler(opts, seqs, vocab_size)
    device = seqs.seq.device
    eos = torch.tensor(opts.eos_token_ids, device=device) if opts.eos_token_ids else None
    can_stop = eos is not None or stop_fn is not None
    unfinished = torch.ones(seqs.batch_size, dtype=torch.bool, device=device)
    needed = torch.zeros((), dtype=torch.long, device=device)  # steps until the last row finished
    count_needed = can_stop and check_every > 1
    fill = opts.fill_token_id
    for step in range(opts.max_new_tokens):
        with torch.inference_mode():
            if count_needed:
                needed += unfinished.any()
            tokens = sampler(seqs.next_logits())
            if can_stop:
                tokens = torch.where(unfinished, tokens, fill)
            seqs.append(tokens)
            sampler.saw(tokens)
            if can_stop:
                if eos is not None:
                    unfinished &= ~torch.isin(tokens, eos)
                if stop_fn is not None:
                    stopped = stop_fn(seqs)
                    if stopped is not None:
                        unfinished &= ~stopped
        yield tokens
        if can_stop and (step + 1) % check_every == 0 and not bool(unfinished.any()):
            break
    if count_needed:
        seqs.length = seqs.prompt_len + int(needed)
