"""Write a trained model's own text, to distil a draft model for speculative decoding on it.

A draft pays only when the model keeps its guesses, and a small model trained on the same corpus
agrees with a larger one on about half of the greedy tokens (docs/benchmarks.md). Trained further
on the larger model's own output, the same small model learns what the larger one says, which is
what a draft must guess (DistillSpec's observation: distil on the target's own text). Half of the
batches are the speculative bench's kind of text (a few random tokens, 28 tokens sampled at
temperature 0.8, then greedy), the other half plain samples at 0.8. Each batch is one .txt file of
rows separated by blank lines; the directory is written under a temporary name and renamed at the
end, so a stopped run leaves no half-written corpus behind.

    python scripts/draft_text.py runs/big runs/big-text --batches 60
    decoderlm prepare --source runs/big-text --tokenizer runs/big --out runs/big-text-data
    decoderlm train --init-from runs/small --data runs/big-text-data --out runs/small-draft \\
        --set train.time_budget=7m train.lr=1e-3 train.warmup_steps=20
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import torch

import decoderlm
from decoderlm.errors import DecoderLMError
from decoderlm.generate import generate

START_TOKENS = 4  # random tokens each row starts from (dropped from the text)
SAMPLED = 28  # tokens sampled at 0.8 before greedy decoding takes over (as the bench's prompt)


def model_text(model, tokenizer, batch: int, rows: int, tokens: int, compile: bool) -> list[str]:
    """`rows` texts of `tokens` tokens each; batch b's seeds make it the same on every run."""
    vocab = model.config.vocab_size
    start = torch.randint(0, vocab, (rows, START_TOKENS), generator=torch.Generator().manual_seed(1000 + batch))
    if batch % 2 == 0:
        ids = generate(model, start, min(SAMPLED, tokens), temperature=0.8, seed=batch, compile=compile)
        ids = generate(model, ids, tokens - min(SAMPLED, tokens), temperature=0, compile=compile)
    else:
        ids = generate(model, start, tokens, temperature=0.8, seed=batch, compile=compile)
    return [tokenizer.decode(row.tolist()) for row in ids[:, START_TOKENS:]]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="the trained model whose text to write (a run or HF directory)")
    parser.add_argument("out", type=Path, help="the new directory of .txt files (must not exist)")
    parser.add_argument("--batches", type=int, default=60, help="files to write (default 60)")
    parser.add_argument("--rows", type=int, default=32, help="texts per file, generated together (default 32)")
    parser.add_argument("--tokens", type=int, default=248, help="tokens per text (default 248)")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="decode eagerly (no build; slower for long runs)")
    args = parser.parse_args(argv)
    try:
        if min(args.batches, args.rows, args.tokens) < 1:
            raise DecoderLMError("--batches, --rows and --tokens must be at least 1")
        if args.out.exists():
            raise DecoderLMError(f"{args.out} exists; choose a new directory")
        lm = decoderlm.load(args.run, dtype="bfloat16" if args.compile else "float32")
        if args.tokens + START_TOKENS > lm.model.config.max_seq_len:
            raise DecoderLMError(f"--tokens {args.tokens} does not fit the model's context of "
                                 f"{lm.model.config.max_seq_len} (with {START_TOKENS} start tokens)")
    except DecoderLMError as err:
        print(f"draft_text: {err}", file=sys.stderr)
        return 2
    partial = args.out.with_name(f".{args.out.name}.partial-{os.getpid()}")
    partial.mkdir(parents=True)
    try:
        for batch in range(args.batches):
            texts = model_text(lm.model, lm.tokenizer, batch, args.rows, args.tokens, args.compile)
            (partial / f"text-{batch:04d}.txt").write_text("".join(t + "\n\n" for t in texts), encoding="utf-8")
            print(f"batch {batch + 1}/{args.batches}", file=sys.stderr, flush=True)
        os.replace(partial, args.out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
