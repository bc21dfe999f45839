"""Speculative decoding at batch 1, compiled on both sides: plain greedy against greedy with a draft
model about 1/8 the size on the model's own sampled text, and against prompt lookup on a prompt that
asks for a passage to be written out again.

The guesses mean something only with trained models: DECODERLM_BENCH_TARGET (default: the quickstart,
DECODERLM_BENCH_RUN or runs/shakespeare) and DECODERLM_BENCH_DRAFT, a draft trained on the same data
and tokenizer. Prompt lookup pays only when the model copies from its context, which a small model
learns late: DECODERLM_BENCH_COPY_TARGET names a model for the prompt-lookup row (default: the
target). Each row reports the share of guesses kept, which bounds what speculation can gain. Without
trained models (and in quick runs) the models are random and the rows only show that the machinery
runs and what a step costs."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

import decoderlm
from decoderlm import DecoderLM
from decoderlm.bench.common import alternate, median
from decoderlm.bench.decode_quantized import SIZES, TRAINED_RUN
from decoderlm.generate import generate
from decoderlm.generate.drafts import PromptLookup
from decoderlm.generate.model_calls import StaticCacheRunner
from decoderlm.generate.speculative import DEFAULT_DRAFT_TOKENS, speculative_cache_length

TABLE = "speculative decoding (compiled, greedy, batch 1)"
# Guesses per prompt-lookup round: a long copy keeps nearly all of them, and on a small model a
# verification's cost grows much more slowly than its positions (docs/benchmarks.md), so long rounds pay.
LOOKUP = 32
LOOKUP_ROW = f"prompt lookup {LOOKUP}, copy prompt"


def _models(quick: bool):
    """(target, draft, tokenizer or None, where they came from), all in bf16."""
    run = Path(os.environ.get("DECODERLM_BENCH_TARGET") or os.environ.get("DECODERLM_BENCH_RUN", TRAINED_RUN))
    draft = os.environ.get("DECODERLM_BENCH_DRAFT")
    if not quick and (run / "config.json").is_file() and draft:
        lm, small = decoderlm.load(run, dtype="bfloat16"), decoderlm.load(draft, dtype="bfloat16")
        return lm.model, small.model, lm.tokenizer, f"trained: {run} with draft {draft}"
    config = SIZES["tiny" if quick else "6x512"]
    torch.manual_seed(0)
    target = DecoderLM(config).eval().to(torch.bfloat16)
    small = config.replace(n_layer=max(1, config.n_layer // 6), d_model=config.d_model // 2,
                           d_ff=config.d_ff // 2 if config.d_ff else None)
    return target, DecoderLM(small).eval().to(torch.bfloat16), None, "random weights (timing only)"


PASSAGE = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
           "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n"
           "And by opposing end them. To die, to sleep;\nNo more; and by a sleep to say we end\n"
           "The heart-ache and the thousand natural shocks\nThat flesh is heir to: 'tis a consummation\n"
           "Devoutly to be wish'd.")


def _copy_prompt(tokenizer, vocab_size: int, length: int) -> tuple[torch.Tensor, int]:
    """A passage and a request to write it out again, as in an edit of a document or of code:
    (prompt (1, P), the passage's length in tokens, which is how many new tokens the row decodes)."""
    if tokenizer is not None:
        passage = tokenizer.encode(PASSAGE)
        ids = passage + tokenizer.encode("\n\nAgain, word for word:\n")
    else:
        passage = torch.randint(0, vocab_size, (length,), generator=torch.Generator().manual_seed(3)).tolist()
        ids = passage + passage[:8]
        passage = passage[8:]
    return torch.tensor([ids]), len(passage)


def _copy_model(target, tokenizer, quick: bool):
    """(model, tokenizer, where it came from) for the prompt-lookup row."""
    run = os.environ.get("DECODERLM_BENCH_COPY_TARGET")
    if quick or not run:
        return target, tokenizer, None
    lm = decoderlm.load(run, dtype="bfloat16")
    return lm.model, lm.tokenizer, f"trained: {run}"


def run(quick: bool) -> list[dict]:
    target, draft, tokenizer, origin = _models(quick)
    copier, copier_tokenizer, copier_origin = _copy_model(target, tokenizer, quick)
    new_tokens = 24 if quick else 256
    vocab = target.config.vocab_size
    start = torch.randint(0, vocab, (1, 4), generator=torch.Generator().manual_seed(1))
    sampled = generate(target, start, 28, temperature=0.8, seed=0, compile=False)  # the model's own text
    copy_prompt, copy_length = _copy_prompt(copier_tokenizer, copier.config.vocab_size, 48 if quick else 200)
    compiled = not quick  # --quick compiles nothing (tens of seconds each): eager, proving only that it runs
    # Speculation keeps prompt, text and the guesses in the context window (the quickstart's is 256).
    n_own = min(new_tokens, target.config.max_seq_len - DEFAULT_DRAFT_TOKENS - sampled.shape[1])
    n_copy = min(copy_length, copier.config.max_seq_len - LOOKUP - copy_prompt.shape[1])
    runs = {
        "plain": lambda: generate(target, sampled, n_own, temperature=0, compile=compiled),
        "draft model": lambda: generate(target, sampled, n_own, temperature=0, compile=compiled,
                                        draft_model=draft),
        "plain, copy prompt": lambda: generate(copier, copy_prompt, n_copy, temperature=0, compile=compiled),
        LOOKUP_ROW: lambda: generate(copier, copy_prompt, n_copy, temperature=0, compile=compiled,
                                     prompt_lookup=LOOKUP),
    }
    outputs = {name: fn() for name, fn in runs.items()}  # also compiles
    seconds = alternate(runs, warmup=0, repeats=2 if quick else 7)  # medians of 7: the machine drifts
    counts = {"plain": n_own, "draft model": n_own, "plain, copy prompt": n_copy, LOOKUP_ROW: n_copy}
    rate = {name: counts[name] / median(s) for name, s in seconds.items()}
    draft_share = sum(p.numel() for p in draft.parameters()) / sum(p.numel() for p in target.parameters())
    exact = {"draft model": _same_in_fp32(target, sampled, n_own, draft_model=draft),
             LOOKUP_ROW: _same_in_fp32(copier, copy_prompt, n_copy, prompt_lookup=LOOKUP)}
    kept = {"draft model": _kept_share(outputs["plain"], sampled.shape[1], DEFAULT_DRAFT_TOKENS,
                                       lambda seq, k: generate(draft, seq.view(1, -1), k, temperature=0,
                                                               compile=False)[0, seq.shape[0]:]),
            LOOKUP_ROW: _kept_share(outputs["plain, copy prompt"], copy_prompt.shape[1], LOOKUP, _lookup)}
    best = {"draft model": _best_case(target, DEFAULT_DRAFT_TOKENS, compiled, draft=draft,
                                      cache_len=speculative_cache_length(target, sampled.shape[1], n_own,
                                                                         None, draft)),
            LOOKUP_ROW: _best_case(copier, LOOKUP, compiled,
                                   cache_len=speculative_cache_length(copier, copy_prompt.shape[1], n_copy,
                                                                      LOOKUP, None))}
    rows = []
    for name, base in (("draft model", "plain"), (LOOKUP_ROW, "plain, copy prompt")):
        models = copier_origin if name != "draft model" and copier_origin else origin
        rows.append({"suite": "generate", "table": TABLE, "models": models, "contender": name,
                     "draft size / model size": draft_share if name == "draft model" else "",
                     "guesses kept": kept[name][0], "new tokens per model call": kept[name][1],
                     "new tokens": counts[name], "new tok/s": rate[name],
                     "plain tok/s": rate[base], "speed-up": rate[name] / rate[base],
                     "speed-up if every guess were kept": best[name],
                     "same ids as plain greedy (bf16)": bool(torch.equal(outputs[name], outputs[base])),
                     "same ids as plain greedy (fp32)": exact[name]})
    return rows


def _best_case(model, k: int, compiled: bool, *, cache_len: int, draft=None, calls: int = 50) -> float:
    """What a round could gain at most, from the calls' own costs (medians of `calls`): k + 1 plain
    steps against one round that keeps all k guesses (a draft model then steps k + 1 times: its k - 1
    further guesses, and next round the last guess and the model's own token; and the verification
    of k + 1 positions). Prefill and bookkeeping are left out. Where a draft's step costs nearly as
    much as the model's (small models: mostly fixed costs), this stays below 1 whatever is kept."""
    def cost(runner, call) -> float:
        seconds = []
        for _ in range(calls):
            start = time.perf_counter()
            call()
            seconds.append(time.perf_counter() - start)
            runner.filled = prompt.shape[0]
        return median(seconds)

    prompt, round_tokens = torch.zeros(8, dtype=torch.long), torch.zeros(k + 1, dtype=torch.long)
    with torch.inference_mode():
        runner = StaticCacheRunner(model, cache_len, compiled)
        runner.prefill(prompt)
        runner.step(prompt[0])  # the first call loads (or builds) the compiled code
        step = cost(runner, lambda: runner.step(prompt[0]))
        runner.verify(round_tokens)
        verify = cost(runner, lambda: runner.verify(round_tokens))
        guessing = 0.0
        if draft is not None:
            small = StaticCacheRunner(draft, cache_len, compiled)
            small.prefill(prompt)
            small.step(prompt[0])
            guessing = (k + 1) * cost(small, lambda: small.step(prompt[0]))
    return (k + 1) * step / (guessing + verify)


def _lookup(seq: torch.Tensor, k: int) -> torch.Tensor | None:
    proposal = PromptLookup().propose(seq, k)
    return None if proposal is None else proposal[0]


def _kept_share(plain: torch.Tensor, prompt_len: int, k: int, propose) -> tuple[float, float]:
    """(The share of guesses the model keeps, new tokens per call of the model), replayed over plain
    greedy's output (1, n): from the prompt's end, guess k tokens, keep the prefix that matches, step
    past it and the model's own token; where `propose` has no guess (None), one token without a
    round. Near the end only the guesses the text can check count. The second number is what
    speculation could gain if guessing were free and a round cost no more than a plain step: no
    speed-up beyond it, whatever the kernels."""
    seq, n, kept, checked, calls = plain[0], prompt_len, 0, 0, 0
    while n < seq.shape[0]:
        guesses = propose(seq[:n], k)
        calls += 1
        if guesses is None:
            n += 1
            continue
        known = seq[n:n + k]
        match = int((guesses[:known.shape[0]] == known).long().cumprod(0).sum())
        kept, checked, n = kept + match, checked + known.shape[0], n + match + 1
    return kept / max(1, checked), (seq.shape[0] - prompt_len) / max(1, calls)


def _same_in_fp32(model, prompt, n, **speculation) -> bool:
    """Speculative greedy equals plain greedy up to rounding: checked eagerly on float32 copies, where
    verifying k + 1 positions at once does not part near-ties as bf16 rounding can."""
    import copy

    model32 = copy.deepcopy(model).float()
    if "draft_model" in speculation:
        speculation["draft_model"] = copy.deepcopy(speculation["draft_model"]).float()
    plain = generate(model32, prompt, n, temperature=0, compile=False)
    return bool(torch.equal(plain, generate(model32, prompt, n, temperature=0, compile=False, **speculation)))
