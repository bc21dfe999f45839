"""`generate(model, input_ids, max_new_tokens, ...)`: token ids in, token ids out."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from decoderlm.errors import DecoderLMError
from decoderlm.generate.beam import beam_search
from decoderlm.generate.decoding import Sequences, as_prompt
from decoderlm.generate.defaults import (announce_compile, choose_compile, compiled_already,
                                         speculation_compiled_already)
from decoderlm.generate.options import GenerationOptions, eos_tuple, require_decoding_memory
from decoderlm.generate.sampling import StopFn, sample_steps
from decoderlm.generate.speculative import (DEFAULT_DRAFT_TOKENS, check_speculative, speculative_cache_length,
                                            speculative_tokens)


def generate(model, input_ids, max_new_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, min_p: float | None = None, repetition_penalty: float = 1.0,
             num_beams: int = 1, length_penalty: float = 1.0, early_stopping: bool | str = False,
             eos_token_id: int | list[int] | None = None, pad_token_id: int | None = None,
             attention_mask=None, seed: int | None = None, stream: bool = False,
             stop_fn: StopFn | None = None, compile: bool | None = None, draft_model=None,
             prompt_lookup: int | None = None):
    """Continue each prompt row by up to `max_new_tokens` tokens.

    input_ids: (B, T) or (T,) ids, left-padded when the rows differ in length, with `attention_mask`
    (B, T) marking real tokens 1 and padding 0. temperature 0 is greedy; otherwise tokens are drawn
    after the repetition penalty, temperature, top-k, top-p and min-p (in that order), from a
    generator seeded with `seed` (or torch's global state when None). num_beams > 1 is beam search
    (deterministic; early_stopping as in transformers: True, False or "never").
    Each row stops at its own EOS (any of `eos_token_id`); afterwards it is filled with pad_token_id
    (or the EOS). An empty prompt starts from the EOS token.

    Returns (B, T + n) with n <= max_new_tokens (all rows finished early: n is the last row's end),
    or, with stream=True, an iterator over each step's (B,) new tokens.
    `stop_fn(sequences)` may return a (B,) bool tensor of rows to finish now (used for stop strings).
    compile=True decodes through a compiled one-token step over a static cache (greedy and sampling;
    beam search stays eager): several times faster per token, but the first call compiles for tens of
    seconds, so it pays off for long or repeated generations with fixed weights. compile=None (the
    default) compiles when that pays (decoderlm.generate.defaults); compile=False never does.
    draft_model (same vocabulary) or prompt_lookup=N (guess N tokens by copying from the text so far):
    speculative decoding of one prompt (decoderlm.generate.speculative); greedy output is plain greedy's.
    """
    opts = GenerationOptions(
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        repetition_penalty=repetition_penalty, num_beams=num_beams, length_penalty=length_penalty,
        early_stopping=early_stopping, eos_token_ids=eos_tuple(eos_token_id), pad_token_id=pad_token_id,
        seed=seed)
    vocab_size = model.config.vocab_size
    opts.validate(vocab_size)
    if stream and num_beams > 1:
        raise DecoderLMError("streaming works with greedy decoding and sampling, not with beam search")
    device = model.tok_emb.weight.device
    _use_decoding_kernels(model, draft_model)
    prompt, mask = as_prompt(input_ids, attention_mask, opts.eos_token_ids, device)
    require_decoding_memory(model.config, prompt.shape[0] * num_beams, prompt.shape[1], max_new_tokens,
                            model.tok_emb.weight.dtype, device, f"generating with num_beams={num_beams}")
    if draft_model is not None or prompt_lookup is not None:
        return _speculative(model, prompt, mask, opts, stream, stop_fn, compile, draft_model, prompt_lookup)
    compile = _choose_compile(compile, model, prompt, mask, opts)

    if stream:
        return _stream(model, prompt, mask, opts, vocab_size, stop_fn, compile)
    if max_new_tokens == 0:
        return prompt.clone()
    with _eval_mode(model):
        if num_beams > 1:
            with torch.inference_mode():
                seqs = Sequences(model, prompt.repeat_interleave(num_beams, 0),
                                 None if mask is None else mask.repeat_interleave(num_beams, 0), max_new_tokens)
                new = beam_search(seqs, opts, vocab_size)
            return torch.cat([prompt, new.clone()], dim=1)
        with torch.inference_mode():
            seqs = Sequences(model, prompt, mask, max_new_tokens, compiled=compile)
        check_every = 1 if device.type == "cpu" else 8  # CPU syncs are free; on GPUs each one stalls
        for _ in sample_steps(seqs, opts, vocab_size, stop_fn=stop_fn, check_every=check_every):
            pass
        # A copy made outside inference mode, so callers may use it with autograd (e.g. a loss).
        return seqs.all_tokens().clone()


def _use_decoding_kernels(*models) -> None:
    """CPU models decode through decoderlm.kernels' layers (same weights, same results up to
    rounding; a bf16 decoding step's attention is several times faster there). In place, once."""
    from decoderlm.kernels import apply_cpu_kernels

    for model in models:
        if model is not None and model.tok_emb.weight.device.type == "cpu":
            apply_cpu_kernels(model)


def _stream(model, prompt, mask, opts, vocab_size, stop_fn, compile) -> Iterator[torch.Tensor]:
    """Yield each step's (B,) tokens; the model stays in eval mode until the iterator ends."""
    with _eval_mode(model):
        with torch.inference_mode():
            seqs = Sequences(model, prompt, mask, opts.max_new_tokens, compiled=compile)
        for tokens in sample_steps(seqs, opts, vocab_size, stop_fn=stop_fn, check_every=1):
            yield tokens.clone()


def _choose_compile(compile, model, prompt, mask, opts) -> bool:
    padded = mask is not None and not bool(mask.bool().all())
    chosen = choose_compile(compile, model, opts.max_new_tokens, prompt.shape[0], opts.num_beams,
                            prompt_len=prompt.shape[1], padded=padded)
    if chosen and opts.num_beams == 1 and opts.max_new_tokens and \
            not compiled_already(model, prompt.shape[0], prompt.shape[1], opts.max_new_tokens, padded):
        announce_compile()
    return chosen


def _speculative(model, prompt, mask, opts, stream, stop_fn, compile, draft_model, prompt_lookup):
    """Speculative decoding of one prompt (left padding, if any, dropped): the ids, or a stream."""
    check_speculative(opts, prompt.shape[0], draft_model, prompt_lookup, model)
    if mask is not None:
        prompt = prompt[:, mask[0].bool()]
    # A text that would outgrow the context is refused here, not when a stream is first read.
    cache_len = speculative_cache_length(model, prompt.shape[1], opts.max_new_tokens, prompt_lookup, draft_model)
    chosen = choose_compile(compile, model, opts.max_new_tokens, kind="speculative")
    guesses = prompt_lookup or DEFAULT_DRAFT_TOKENS
    if chosen and not speculation_compiled_already(model, cache_len, guesses + 1, draft_model):
        announce_compile()
    compile = chosen

    def rounds():
        with _eval_mode(model), _eval_mode(draft_model if draft_model is not None else model):
            yield from speculative_tokens(model, prompt, opts, draft_model=draft_model,
                                          prompt_lookup=prompt_lookup, compiled=compile, stop_fn=stop_fn)

    if stream:
        return (token.view(1) for new in rounds() for token in new)
    return torch.cat([prompt, *(new.view(1, -1) for new in rounds())], dim=1)


@contextlib.contextmanager
def _eval_mode(model):
    """Dropout off while generating; each module's train/eval mode comes back afterwards. Only the
    modules in training mode are switched: switching all of them, as `model.eval()` does, costs more
    than a decoding step of a small model, and a loaded model is already in eval mode."""
    training = [module for module in model.modules() if module.training]
    for module in training:
        module.training = False
    try:
        yield
    finally:
        for module in training:
            module.training = True
