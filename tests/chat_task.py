"""A synthetic chat task for fine-tuning tests: "uppercase this word" over random lower-case letter
strings. Training and held-out words are disjoint, so held-out accuracy measures a learned rule,
not a memorised table. Reusable by any fine-tuning test (full or LoRA): a base with `build_base`,
the words with `split_words`, the training file with `write_chat_jsonl`, a fine-tune with
`finetune(base, data, out, extra_sets)` (extra `--set`s override the task's), and a score with
`heldout_accuracy`. docs/finetuning.md has the accuracies measured over seeds.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import string
from pathlib import Path

import torch

import decoderlm
from conftest import one_torch_thread
from decoderlm.chat import ChatRenderer, read_saved_template, resize_token_embeddings
from test_train_support import run_cli

WORD_LENGTH = 3  # one length: the reply's i-th letter is always the same distance back from it
QUIET = ["--no-progress", "--no-samples"]
# Tiny models run fastest on one thread, and a fixed count makes runs repeatable.
COMMON_SETS = ["train.time_budget=none", "train.compile=false", "train.dtype=float32", "train.threads=1"]
# A 2-layer, 64-wide char-level model trained one step on the alphabet: its vocabulary has every
# letter, and it knows nothing of the task or of the chat template.
BASE_SETS = ["model.max_seq_len=64", "model.d_model=64", "model.n_layer=2", "model.n_head=4", "model.position=rope",
             "train.max_steps=1", "train.warmup_steps=0", "train.batch_size=8", "data.vocab_size=64", *COMMON_SETS]
# Muon, not AdamW: with AdamW the loss stays on a plateau for a number of steps that depends on the
# seed (sometimes the whole run) before the copying forms; with Muon (whose orthogonalised updates likely grow the small weight
# directions it needs as fast as the large ones) the loss is <= 0.02 by step 80 for every seed
# tried (docs/finetuning.md), so 120 steps leave a margin.
FINETUNE_SETS = ["train.optimizer=muon", "train.max_steps=120", "train.batch_size=32", "train.lr=1e-2",
                 "train.warmup_steps=20", "train.eval_every=120", "data.val_fraction=0.02", *COMMON_SETS]


def build_base(root: Path, seed: int = 1337) -> Path:
    """The base model of `BASE_SETS` (init seed `seed`) in `root`/base; returns the run directory."""
    root.mkdir(parents=True, exist_ok=True)
    corpus = root / "letters.txt"
    corpus.write_text("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ\n" * 50)
    code, _, _ = run_cli(["train", "--data", corpus, "--tokenizer", "char", "--out", root / "base", *QUIET,
                          "--set", *BASE_SETS, f"train.seed={seed}"])
    assert code == 0, "the base model did not train"
    return root / "base"


def finetune(base: Path, data: Path, out: Path, extra_sets=()) -> Path:
    """`decoderlm train --init-from base --data data --out out` with `FINETUNE_SETS` and then
    `extra_sets` (later ones win); returns `out`."""
    code, _, _ = run_cli(["train", "--init-from", base, "--data", data, "--out", out, *QUIET,
                          "--set", *FINETUNE_SETS, *extra_sets])
    assert code == 0, "the fine-tune did not run"
    return out


def answer(word: str) -> str:
    return word.upper()


def conversation(word: str) -> dict:
    return {"messages": [{"role": "user", "content": word}, {"role": "assistant", "content": answer(word)}]}


def split_words(n_train: int, n_heldout: int, seed: int = 0, length: int = WORD_LENGTH) -> tuple[list, list]:
    """`n_train` training words and `n_heldout` other words, all distinct random lower-case strings."""
    rng = random.Random(seed)
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < n_train + n_heldout:
        word = "".join(rng.choices(string.ascii_lowercase, k=length))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words[:n_train], words[n_train:]


def write_chat_jsonl(path: Path, words) -> Path:
    """A JSONL of OpenAI-shaped conversations, one per word."""
    path.write_text("".join(json.dumps(conversation(w)) + "\n" for w in words))
    return path


@torch.no_grad()
def greedy_replies(model, renderer: ChatRenderer, words, max_tokens: int) -> list[str]:
    """The model's greedy reply to each word as one user turn, through the template, up to its
    end-of-turn token. The words have one length, so their prompts do too: one batch for all."""
    prompts = [renderer.prompt_ids([{"role": "user", "content": w}]) for w in words]
    assert len({len(p) for p in prompts}) == 1, "the prompts must have one length to be batched"
    ids = torch.tensor(prompts)
    stops = set(renderer.stop_token_ids())
    for _ in range(max_tokens):
        ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    replies = []
    for row in ids[:, len(prompts[0]):].tolist():
        ended = [i for i, t in enumerate(row) if t in stops]
        replies.append(renderer.tokenizer.decode(row[:ended[0]] if ended else row))
    return replies


def heldout_accuracy(run: Path, words, weights_from: Path | None = None) -> float:
    """The share of `words` whose greedy reply (through `run`'s chat template and tokenizer) is
    exactly `answer(word)`. `weights_from`: score that model's weights instead, its vocabulary grown
    to the run's (the fine-tune's starting point)."""
    lm = decoderlm.load(run)
    model = lm.model
    if weights_from is not None:
        model = decoderlm.load(weights_from).model
        resize_token_embeddings(model, lm.config.vocab_size)
    model.eval()
    renderer = ChatRenderer(read_saved_template(run), lm.tokenizer)
    with one_torch_thread():
        replies = greedy_replies(model, renderer, words, len(answer(words[0])) + 1)
    return sum(reply == answer(w) for reply, w in zip(replies, words)) / len(words)


def sweep(seeds, root: Path) -> None:
    """The test's fine-tune once per seed, each with its own base init, word split and training
    seed; prints the held-out accuracy before and after and the training loss every 20 steps."""
    for seed in seeds:
        train, heldout = split_words(2000, 100, seed=seed)
        data = write_chat_jsonl(root / f"seed{seed}.jsonl", train)
        with contextlib.redirect_stdout(io.StringIO()):  # the runs' own logs
            base = build_base(root / f"seed{seed}", seed=1000 + seed)
            run = finetune(base, data, root / f"seed{seed}" / "ft", [f"train.seed={seed}"])
        before, after = heldout_accuracy(run, heldout, weights_from=base), heldout_accuracy(run, heldout)
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        losses = " ".join(f"{r['step']}:{r['loss']:.2f}" for r in rows if "loss" in r and r["step"] % 20 == 0)
        print(f"seed {seed}: held-out accuracy before {before:.0%}, after {after:.0%}; loss {losses}", flush=True)


if __name__ == "__main__":
    # PYTHONPATH=src:tests python tests/chat_task.py 0 1 2 3 4   (the numbers in docs/finetuning.md)
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        sweep([int(s) for s in sys.argv[1:]] or [0], Path(tmp))
