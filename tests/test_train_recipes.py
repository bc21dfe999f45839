"""The long seed recipes run end to end for a few steps on a slice of the shared books.

What is changed, for speed only: width (d_model 64, d_ff 4x or 2x), depth (2 layers), batch size
(4 and 2), the number of steps (2), and fp32 instead of bf16 autocast (at width 64 bf16 is slower on
CPU). Everything else is the preset's: positions, norms and their placement, FFN kind, heads / KV
heads, dropout and attention dropout, context length, tokenizer, optimizer and schedule.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest

import decoderlm
from test_train_support import run_cli

BOOKS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "books"
GPT2 = Path(__file__).resolve().parents[2] / "shared" / "tokenizers" / "gpt2"


@pytest.fixture(scope="module")
def book_slice(tmp_path_factory) -> Path:
    book = BOOKS / "austen_persuasion.txt.gz"
    if not book.is_file():
        pytest.skip("../shared/corpus/books is not available")
    text = gzip.open(book, "rt", encoding="utf-8").read()[20_000:80_000]
    path = tmp_path_factory.mktemp("books") / "persuasion-slice.txt"
    path.write_text(text)
    return path


def _train(tmp_path, capsys, preset, data, sets):
    run = tmp_path / preset
    args = ["train", "--preset", preset, "--data", data, "--out", run, "--no-progress"]
    code, out, err = run_cli(args + [x for s in sets for x in ("--set", s)], capsys)
    assert code == 0, err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in records if "loss" in r)
    assert any("val_loss" in r for r in records)
    assert "--- sample" in out
    return run, decoderlm.load(run)


def test_tinystories_6l_trains_a_few_steps(tmp_path, capsys, book_slice):
    if not (GPT2 / "gpt2.tiktoken").is_file():
        pytest.skip("../shared/tokenizers/gpt2 is not available")
    run, lm = _train(tmp_path, capsys, "tinystories-6l", book_slice, [
        f"data.tokenizer={GPT2}", "model.d_model=64", "model.d_ff=256", "model.n_layer=2",
        "train.batch_size=4", "train.max_steps=2", "train.eval_every=1", "train.eval_batches=1",
        "train.dtype=float32", "train.sample_tokens=8"])
    c = lm.config
    assert (c.vocab_size, c.max_seq_len, c.position, c.pre_norm, c.activation, c.dropout) == \
        (50257, 64, "sinusoidal", False, "relu", 0.2)
    assert lm.tokenizer.encode("Hello world") == [15496, 995]


def test_llama_gutenberg_trains_a_few_steps(tmp_path, capsys, book_slice):
    run, lm = _train(tmp_path, capsys, "llama-gutenberg", book_slice, [
        "model.d_model=64", "model.d_ff=128", "model.n_layer=2", "train.batch_size=2", "train.max_steps=2",
        "train.eval_every=1", "train.eval_batches=1", "train.dtype=float32", "train.sample_tokens=8",
        "train.sample_prompts=It was"])
    c = lm.config
    assert (c.max_seq_len, c.n_head, c.n_kv_head, c.position, c.ffn, c.norm, c.attn_dropout) == \
        (512, 8, 4, "rope", "swiglu", "rmsnorm", 0.1)
    recipe = json.loads((run / "config.json").read_text())
    assert recipe["train"]["grad_clip"] == 6.0 and recipe["train"]["sampler"] == "sequential"
    assert recipe["data"]["sources"] == [str(book_slice)]
    assert c.vocab_size == lm.tokenizer.vocab_size <= 10000  # BPE on a small slice may stop short of 10k
