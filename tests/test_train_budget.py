"""train.time_budget bounds the whole run: the final evaluation shrinks (or is skipped) to fit
what is left, and the samples printed at the end stop at the budget's end."""

from __future__ import annotations

import json
import time

from decoderlm.config import TrainConfig
from decoderlm.data.shards import TokenData
from decoderlm.train.samples import run_samples
from test_train_support import char_data, run_cli, tiny_sets  # noqa: F401

BUDGET = 4.0
HUGE_EVAL = 100_000  # batches: far more than the budget can evaluate


def test_budget_shrinks_the_final_evaluation_and_bounds_samples(tmp_path, capsys, char_data):
    run = tmp_path / "run"
    vocab = TokenData.open(char_data).meta["vocab_size"]
    sets = tiny_sets(model__vocab_size=vocab, train__max_steps=1_000_000, train__eval_every=1_000_000,
                     train__eval_batches=HUGE_EVAL, train__time_budget=f"{BUDGET}s")
    began = time.perf_counter()
    code, out, err = run_cli(["train", "--data", char_data, "--out", run, "--no-progress", *sets], capsys)
    wall = time.perf_counter() - began
    assert code == 0, err
    assert "(time budget used up)" in out
    assert f"of {HUGE_EVAL} batches to fit train.time_budget" in out or "evaluation skipped" in out, out
    assert wall < BUDGET + 4.0, (wall, out)  # the budget, plus building the model and loading the run
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evaluated = [r for r in records if "val_loss" in r]
    assert all(0 < r["eval_batches"] < HUGE_EVAL for r in evaluated)  # shrunk evaluations say so

    config = TrainConfig(sample_prompts=("the", "a"), sample_tokens=8, sample_temperature=0.0)
    assert run_samples(run, config, deadline=time.perf_counter()) == []  # no time left: no samples
    full = run_samples(run, config, deadline=time.perf_counter() + 600)
    assert [prompt for prompt, _ in full] == ["the", "a"] and all(len(text) > len(p) for p, text in full)
