"""`decoderlm train --init-from` and chat fine-tuning: a model that learns a chat task it could not
do before, the step-0 loss of a started run, exact resume, and bad chat input refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import decoderlm
from decoderlm.chat import ChatRenderer, read_saved_template, resize_token_embeddings
from test_train_support import run_cli

# A made-up country -> capital table: nothing a base model can know.
CAPITALS = {"zorbia": "KLUM", "vendal": "ORPA", "mirrow": "TASK", "quelan": "BRIX", "fandor": "YELP",
            "ostrel": "WUNG", "pexia": "DRAV", "hulmar": "CEZO"}
COMMON = ["--no-progress", "--no-samples"]


def _chat(country: str) -> dict:
    return {"messages": [{"role": "user", "content": country}, {"role": "assistant", "content": CAPITALS[country]}]}


def _write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A tiny char-level model (random init, one step): it knows the characters, nothing else."""
    root = tmp_path_factory.mktemp("base")
    (root / "corpus.txt").write_text(("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ\n") * 50)
    code, _, _ = run_cli(["train", "--data", root / "corpus.txt", "--tokenizer", "char", "--out", root / "run", *COMMON,
                          "--set", "model.max_seq_len=64", "model.d_model=48", "model.n_layer=1", "model.n_head=4",
                          "model.n_kv_head=2", "model.position=rope", "train.max_steps=1", "train.batch_size=2",
                          "train.time_budget=none", "train.compile=false", "train.dtype=float32", "data.vocab_size=64"])
    assert code == 0
    return root / "run"


@torch.no_grad()
def _accuracy(run: Path, words: list[str], weights_from: Path | None = None) -> float:
    """Greedy replies to each country, through the run's chat template and tokenizer; the share that
    name its capital. `weights_from`: use that model's weights instead (the vocabulary grown to the run's)."""
    lm = decoderlm.load(run)
    model = lm.model
    if weights_from is not None:
        model = decoderlm.load(weights_from).model
        resize_token_embeddings(model, lm.config.vocab_size)
    renderer = ChatRenderer(read_saved_template(run), lm.tokenizer)
    stops = set(renderer.stop_token_ids())
    right = 0
    for word in words:
        ids = renderer.prompt_ids([{"role": "user", "content": word}])
        reply = []
        for _ in range(6):
            next_id = int(model(torch.tensor([ids + reply]))[0, -1].argmax())
            if next_id in stops:
                break
            reply.append(next_id)
        right += renderer.tokenizer.decode(reply) == CAPITALS[word]
    return right / len(words)


def test_chat_finetune_learns_a_task_it_could_not_do(base_run, tmp_path):
    countries = list(CAPITALS)
    data = _write_jsonl(tmp_path / "chat.jsonl", map(_chat, countries * 8))
    code, _, _ = run_cli(["train", "--init-from", base_run, "--data", data, "--out", tmp_path / "ft", *COMMON,
                          "--set", "train.max_steps=40", "train.batch_size=8", "train.lr=1e-2", "train.warmup_steps=5",
                          "train.eval_every=40", "train.time_budget=none", "train.compile=false",
                          "train.dtype=float32", "data.val_fraction=0.05"])
    assert code == 0
    before = _accuracy(tmp_path / "ft", countries, weights_from=base_run)  # the fine-tune's starting point
    after = _accuracy(tmp_path / "ft", countries)
    print(f"capital-of-a-made-up-country accuracy: before {before:.0%}, after {after:.0%}")
    assert before <= 0.05 and after >= 0.9
