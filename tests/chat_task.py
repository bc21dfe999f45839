"""A synthetic chat task for fine-tuning tests: "uppercase this word" over random lower-case letter
strings. Training and held-out words are disjoint, so held-out accuracy measures a learned rule,
not a memorised table. Reusable by any fine-tuning test (full or LoRA): make the words with
`split_words`, the training file with `write_chat_jsonl`, and score a run with `heldout_accuracy`.

Not yet in the default suite: fine-tuning a 2-layer, 64-wide, 2-head char model for 400 steps
(batch 32, lr 1e-2) on 2,000 words reached 100% on 50 held-out words for train.seed 1 and 2 but 0%
for seed 0 (before: 0% for all): whether the copying forms in time depends on the seed.
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

import torch

import decoderlm
from decoderlm.chat import ChatRenderer, read_saved_template, resize_token_embeddings

WORD_LENGTH = 3  # one length: the reply's i-th letter is always the same distance back from it


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
    replies = greedy_replies(model, renderer, words, len(answer(words[0])) + 1)
    return sum(reply == answer(w) for reply, w in zip(replies, words)) / len(words)
