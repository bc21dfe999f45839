"""Write a trained model's own text, to distil a draft model for speculative decoding on it.

A draft pays only when the model keeps most of its guesses. A small model trained further on the
larger model's own output (sequence-level distillation, one of the data choices DistillSpec
compares) learns what the larger one says, which is what a draft must guess; docs/benchmarks.md has
what it gained. Half of the batches are the speculative bench's kind of text (a few random tokens,
28 tokens sampled at temperature 0.8, then greedy), the other half plain samples at 0.8. Each batch
is one .txt file of texts separated by blank lines; the directory appears whole at the end or not
at all (fileio.new_directory).

    python scripts/draft_text.py runs/big runs/big-text --batches 60
    decoderlm prepare --source runs/big-text --tokenizer runs/small --out runs/big-text-data
    decoderlm train --init-from runs/small --data runs/big-text-data --out runs/small-draft \\
        --set train.time_budget=7m train.lr=1e-3 train.warmup_steps=20
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import decoderlm
from decoderlm import fileio
from decoderlm.errors import DecoderLMError
from decoderlm.generate import generate

START_TOKENS = 4  # random tokens each row starts from (dropped from the text)
SAMPLED = 28  # tokens sampled at 0.8 before greedy decoding takes over (as the bench's prompt)


def model_text(model, tokenizer, batch: int, rows: int, tokens: int, compile: bool) -> list[str]:
    """`rows` texts of `tokens` tokens each; batch b's seeds make it the same on every run."""
    vocab = model.config.vocab_size  # may exceed the tokenizer's: the start tokens are dropped anyway
    # Start tokens from seeds 1000 on: the bench's prompt starts from seed 1, so its text is not here.
    start = torch.randint(0, vocab, (rows, START_TOKENS), generator=torch.Generator().manual_seed(1000 + batch))
    sampled = min(SAMPLED, tokens) if batch % 2 == 0 else tokens  # odd batches: samples only
    ids = generate(model, start, sampled, temperature=0.8, seed=batch, compile=compile)
    if sampled < tokens:
        ids = generate(model, ids, tokens - sampled, temperature=0, compile=compile)
    return [tokenizer.decode(row.tolist()) for row in ids[:, START_TOKENS:]]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="the trained model whose text to write (a run or HF directory)")
    parser.add_argument("out", type=Path, help="the new directory of .txt files (new or empty)")
    parser.add_argument("--batches", type=int, default=60, help="files to write (default 60)")
    parser.add_argument("--rows", type=int, default=32, help="texts per file, generated together (default 32)")
    parser.add_argument("--tokens", type=int, default=248, help="tokens per text (default 248)")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="decode eagerly in float32 (no build; slower for long runs, other text)")
    args = parser.parse_args(argv)
    try:
        if min(args.batches, args.rows, args.tokens) < 1:
            raise DecoderLMError("--batches, --rows and --tokens must be at least 1")
        fileio.refuse_nonempty(args.out)
        # Compiled decoding runs in bf16 (its speed); eager decoding keeps float32's exact arithmetic.
        lm = decoderlm.load(args.run, dtype="bfloat16" if args.compile else "float32")
        if lm.tokenizer is None:
            raise DecoderLMError(f"{args.run} has no tokenizer to write its text with")
        if args.tokens + START_TOKENS > lm.model.config.max_seq_len:
            raise DecoderLMError(f"--tokens {args.tokens} does not fit the model's context of "
                                 f"{lm.model.config.max_seq_len} (with {START_TOKENS} start tokens)")
        with fileio.new_directory(args.out) as staged:
            for batch in range(args.batches):
                texts = model_text(lm.model, lm.tokenizer, batch, args.rows, args.tokens, args.compile)
                (staged / f"text-{batch:04d}.txt").write_text("".join(t + "\n\n" for t in texts), encoding="utf-8")
                print(f"batch {batch + 1}/{args.batches}", file=sys.stderr, flush=True)
    except (DecoderLMError, OSError) as err:
        print(f"draft_text: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("draft_text: interrupted; nothing written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
