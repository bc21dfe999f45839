"""Speculative decoding at batch 1, compiled on both sides: plain greedy against greedy with a draft
model about 1/8 the size, and against prompt lookup on a prompt that asks for a copy.

With the trained quickstart (DECODERLM_BENCH_RUN, default runs/shakespeare) and a trained draft
(DECODERLM_BENCH_DRAFT) the guesses mean something; without them (and in quick runs) the models are
random and the rows only show that the machinery runs and what a step costs."""

from __future__ import annotations

import os
from pathlib import Path

import torch

import decoderlm
from decoderlm import DecoderLM
from decoderlm.bench.common import alternate, median
from decoderlm.bench.decode_quantized import SIZES, TRAINED_RUN
from decoderlm.generate import generate

TABLE = "speculative decoding (compiled, greedy, batch 1)"


def _models(quick: bool):
    """(target, draft, tokenizer or None, where they came from), all in bf16."""
    run, draft = Path(os.environ.get("DECODERLM_BENCH_RUN", TRAINED_RUN)), os.environ.get("DECODERLM_BENCH_DRAFT")
    if not quick and (run / "config.json").is_file() and draft:
        lm, small = decoderlm.load(run, dtype="bfloat16"), decoderlm.load(draft, dtype="bfloat16")
        return lm.model, small.model, lm.tokenizer, f"trained: {run} with draft {draft}"
    config = SIZES["tiny" if quick else "6x512"]
    torch.manual_seed(0)
    target = DecoderLM(config).eval().to(torch.bfloat16)
    small = config.replace(n_layer=max(1, config.n_layer // 6), d_model=config.d_model // 2,
                           d_ff=config.d_ff // 2 if config.d_ff else None)
    return target, DecoderLM(small).eval().to(torch.bfloat16), None, "random weights (timing only)"


def _copy_prompt(tokenizer, vocab_size: int, length: int) -> torch.Tensor:
    """A passage followed by an instruction to repeat it: long verbatim copies for prompt lookup."""
    if tokenizer is not None:
        passage = ("To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
                   "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles")
        ids = tokenizer.encode(passage + "\n\nAgain, word for word:\n" + passage[:40])
    else:
        passage = torch.randint(0, vocab_size, (length,), generator=torch.Generator().manual_seed(3)).tolist()
        ids = passage + passage[:8]
    return torch.tensor([ids])


def run(quick: bool) -> list[dict]:
    target, draft, tokenizer, origin = _models(quick)
    new_tokens = 24 if quick else 256
    vocab = target.config.vocab_size
    start = torch.randint(0, vocab, (1, 4), generator=torch.Generator().manual_seed(1))
    sampled = generate(target, start, 28, temperature=0.8, seed=0, compile=False)  # the model's own text
    copy_prompt = _copy_prompt(tokenizer, vocab, 48 if quick else 200)
    compiled = not quick  # --quick compiles nothing (tens of seconds each): eager, proving only that it runs
    # Speculation keeps prompt, text and guesses in the context window (the quickstart's is 256 tokens).
    room = target.config.max_seq_len - 8 - 1
    n_own, n_copy = min(new_tokens, room - sampled.shape[1]), min(new_tokens, room - copy_prompt.shape[1])
    runs = {
        "plain": lambda: generate(target, sampled, n_own, temperature=0, compile=compiled),
        "draft model": lambda: generate(target, sampled, n_own, temperature=0, compile=compiled,
                                        draft_model=draft),
        "plain, copy prompt": lambda: generate(target, copy_prompt, n_copy, temperature=0, compile=compiled),
        "prompt lookup 8, copy prompt": lambda: generate(target, copy_prompt, n_copy, temperature=0,
                                                          compile=compiled, prompt_lookup=8),
    }
    outputs = {name: fn() for name, fn in runs.items()}  # also compiles
    seconds = alternate(runs, warmup=0, repeats=2 if quick else 3)
    counts = {"plain": n_own, "draft model": n_own, "plain, copy prompt": n_copy, "prompt lookup 8, copy prompt": n_copy}
    rate = {name: counts[name] / median(s) for name, s in seconds.items()}
    draft_share = sum(p.numel() for p in draft.parameters()) / sum(p.numel() for p in target.parameters())
    exact = _same_in_fp32(target, draft, sampled, copy_prompt, n_own, n_copy)
    rows = []
    for name, base in (("draft model", "plain"), ("prompt lookup 8, copy prompt", "plain, copy prompt")):
        rows.append({"suite": "generate", "table": TABLE, "models": origin, "contender": name,
                     "draft size / model size": draft_share if name == "draft model" else "",
                     "new tokens": counts[name], "new tok/s": rate[name], "plain tok/s": rate[base], "speed-up": rate[name] / rate[base],
                     "same ids as plain greedy (bf16)": bool(torch.equal(outputs[name], outputs[base])),
                     "same ids as plain greedy (fp32)": exact[name]})
    return rows


def _same_in_fp32(target, draft, sampled, copy_prompt, n_own, n_copy) -> dict[str, bool]:
    """Speculative greedy equals plain greedy up to rounding: checked eagerly on float32 copies, where
    verifying k + 1 positions at once does not part near-ties as bf16 rounding can."""
    import copy

    target32, draft32 = copy.deepcopy(target).float(), copy.deepcopy(draft).float()
    plain = generate(target32, sampled, n_own, temperature=0, compile=False)
    copied = generate(target32, copy_prompt, n_copy, temperature=0, compile=False)
    return {"draft model": bool(torch.equal(plain, generate(target32, sampled, n_own, temperature=0, compile=False,
                                                            draft_model=draft32))),
            "prompt lookup 8, copy prompt": bool(torch.equal(copied, generate(target32, copy_prompt, n_copy,
                                                                              temperature=0, compile=False,
                                                                              prompt_lookup=8)))}
