"""Fine-tune a trained run to copy from its context: the model for the prompt-lookup row of
`decoderlm bench --suite generate` (DECODERLM_BENCH_COPY_TARGET).

Prompt lookup guesses that the text goes on as an earlier part of the context did, so it pays only
when the model copies. A small model trained on plain text learns to copy late (the induction heads
that do it form in a sudden phase change), and the quickstart, asked to write a passage out again,
does not. Two phases teach it:

  1. rows of random tokens, each run written twice, with a quarter of them natural passages written
     twice, 128 tokens long; the loss counts the second copies (and all of a natural row). Random
     tokens leave nothing to learn but the copy; copying appears after about 1,000 steps.
  2. rows shaped like a request, over the whole context: [some text] a passage, a request such as
     "Again, word for word:", the passage again, then more text; three quarters natural.

Natural text is the run's own prepared training data. The new directory (written after each phase)
gets the source's recipe, tokenizer and the tuned weights. docs/benchmarks.md has the run and what
it measured.

    python scripts/copy_finetune.py runs/shakespeare runs/shakespeare-copy [--steps 1500 1500]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

import decoderlm
from decoderlm.data.shards import TokenData
from decoderlm.errors import DecoderLMError
from decoderlm.model.transformer import IGNORE_INDEX
from decoderlm.rundir import RunDirectory

REQUESTS = ["\n\nAgain, word for word:\n", "\nAgain, word for word:\n", "\n\nCopy it out:\n", "\nOnce more:\n",
            "\n\nWrite it out again:\n", "\n\n"]


class CopyRows:
    """Training rows (ids, which targets count) of both phases."""

    def __init__(self, tokenizer, natural: list[int], vocab_size: int, seed: int = 0):
        self.rng, self.natural, self.vocab_size = random.Random(seed), natural, vocab_size
        self.requests = [tokenizer.encode(text) for text in REQUESTS]
        self.blank = tokenizer.encode("\n\n")

    def passage(self, length: int, natural: bool) -> list[int]:
        if natural:
            start = self.rng.randrange(len(self.natural) - length)
            return self.natural[start:start + length]
        return [self.rng.randrange(3, self.vocab_size) for _ in range(length)]  # past pad / eos / bos

    def repeats(self, length: int, natural: bool) -> tuple[list[int], list[bool]]:
        """Phase 1: passages written twice, back to back, until the row is full."""
        ids, counted = [], []
        while len(ids) < length + 1:
            passage = self.passage(self.rng.randint(8, length // 2 - 10), natural)
            request = self.rng.choice(self.requests)
            ids += passage + request + passage + self.blank
            counted += [natural] * (len(passage) + len(request)) + [True] * len(passage) + [natural] * len(self.blank)
        return ids[:length + 1], counted[1:length + 1]

    def request(self, length: int, natural: bool) -> tuple[list[int], list[bool]]:
        """Phase 2: [text] passage, request, passage, then text."""
        ids = []
        if self.rng.random() < 0.5:
            ids = self.passage(self.rng.randint(5, min(60, length // 4)), True) + self.blank
        counted = [True] * len(ids)
        request = self.rng.choice(self.requests)
        size = max(1, min(self.rng.randint(30, 125), (length - len(ids) - len(request)) // 2))
        passage = self.passage(size, natural)
        ids += passage + request + passage
        counted += [natural] * (size + len(request)) + [True] * size
        rest = max(0, length + 1 - len(ids))
        ids += (self.blank + self.passage(rest, True))[:rest]
        counted += [True] * rest
        return ids[:length + 1], counted[1:length + 1]

    def batch(self, phase: int, rows: int, length: int, random_share: float):
        make = self.repeats if phase == 1 else self.request
        pairs = [make(length, self.rng.random() >= random_share) for _ in range(rows)]
        return torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])


PHASES = {1: dict(length=128, rows=16, random_share=0.75, lr=1e-3),
          2: dict(length=256, rows=8, random_share=0.25, lr=5e-4)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a trained run directory")
    parser.add_argument("out", type=Path, help="the new run directory (must not exist)")
    parser.add_argument("--data", type=Path, help="prepared token data (default: the run's own)")
    parser.add_argument("--steps", type=int, nargs=2, default=[1500, 1500], metavar=("PHASE1", "PHASE2"))
    args = parser.parse_args(argv)
    try:
        if args.out.exists():
            raise DecoderLMError(f"{args.out} exists; choose a new directory")
        lm = decoderlm.load(args.run)
        natural = TokenData.open(args.data or RunDirectory(args.run).data_path()).train.tolist()
        tune(lm, natural, args.steps, args.out)
    except DecoderLMError as err:
        print(f"copy_finetune: {err}", file=sys.stderr)
        return 2
    return 0


def tune(lm, natural: list[int], steps_per_phase: list[int], out: Path) -> None:
    """Both phases on `lm`'s model in float32, saved to `out` after each (written by LanguageModel.save)."""
    model, config = lm.model.float(), lm.model.config
    rows = CopyRows(lm.tokenizer, natural, config.vocab_size)
    torch.manual_seed(0)
    started = time.time()
    for phase, steps in zip((1, 2), steps_per_phase):
        settings = PHASES[phase]
        length = min(settings["length"], config.max_seq_len)
        optimizer = torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=0.0, betas=(0.9, 0.95))
        model.train()
        for step in range(1, steps + 1):
            ids, counted = rows.batch(phase, settings["rows"], length, settings["random_share"])
            loss = model(ids[:, :-1], ids[:, 1:].masked_fill(~counted, IGNORE_INDEX))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if step % 100 == 0 or step == steps:
                print(f"phase {phase} step {step}: loss {loss.item():.3f} ({time.time() - started:.0f} s)", flush=True)
        lm.save(out)


if __name__ == "__main__":
    sys.exit(main())
