"""Evaluation, early stopping with patience, `best` weights, and non-finite step handling."""

from __future__ import annotations

import json
import math
import random
import time

import pytest
import torch

from decoderlm import DecoderLM, DecoderLMError, get_recipe
from decoderlm.data.samplers import RandomWindows
from decoderlm.data.shards import TokenData, prepare
from decoderlm.train.loop import train
from decoderlm.train.overrides import apply_overrides, parse_overrides
from test_train_support import assert_same_weights, char_data, weights  # noqa: F401


def _recipe(vocab: int, **train):
    sets = [f"model.{k}={v}" for k, v in dict(vocab_size=vocab, max_seq_len=16, d_model=32, n_layer=1, n_head=2).items()]
    base = dict(batch_size=8, max_steps=200, lr=3e-2, warmup_steps=0, schedule="constant", eval_every=5,
                eval_batches=2, log_every=1, dtype="float32", weight_decay=0.0, time_budget=None, compile=False)
    base.update(train)
    sets += [f"train.{k}={v}" for k, v in base.items()]
    return apply_overrides(get_recipe("shakespeare"), parse_overrides(sets))


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_early_stopping_with_patience_2_keeps_best(tmp_path):
    # Random letters: nothing generalises beyond letter frequencies, so once the model starts to
    # memorise the training text the validation loss stops improving.
    rng = random.Random(0)
    text = "\n".join("".join(rng.choice("abcdefghijklmnopqrst") for _ in range(60)) for _ in range(40))
    (tmp_path / "random.txt").write_text(text)
    data = TokenData.open(prepare([str(tmp_path / "random.txt")], "char", tmp_path / "data", vocab_size=64,
                                  val_fraction=0.2, progress=False))
    recipe = _recipe(data.meta["vocab_size"], early_stop_patience=2)
    run = tmp_path / "run"
    result = train(recipe, data, run, progress=False)

    evals = [(r["step"], r["val_loss"]) for r in _records(run) if "val_loss" in r]
    best, since, expected_stop = math.inf, 0, None
    for step, loss in evals:  # where patience 2 should stop, recomputed from the log
        best, since = (loss, 0) if loss < best else (best, since + 1)
        if since >= 2:
            expected_stop = step
            break
    assert result.stopped == "early_stopping"
    assert expected_stop is not None and result.step == expected_stop == evals[-1][0] < 200
    assert result.best_val_loss == min(loss for _, loss in evals)
    best_step = min(evals, key=lambda e: e[1])[0]
    assert best_step == expected_stop - 10  # two evaluations (every 5 steps) without improvement

    # `best` holds the weights that scored the best validation loss: evaluate them again.
    model = DecoderLM(recipe.model)
    model.load_state_dict(weights(run / "checkpoints/best/model.safetensors"), strict=False)
    model.eval()
    sampler = RandomWindows(data.val, 16, 8, seed=recipe.train.seed)
    with torch.no_grad():
        losses = [model(*sampler.next_batch()).item() for _ in range(2)]
    assert sum(losses) / 2 == pytest.approx(result.best_val_loss, rel=1e-5)
    assert_same_weights(run / "model.safetensors", run / "checkpoints/best/model.safetensors")
    state = torch.load(run / "checkpoints/last/train_state.pt", weights_only=True)
    assert state["step"] == expected_stop and state["evals_without_improvement"] == 2
    val = [r for r in _records(run) if "val_loss" in r][0]
    assert val["val_ppl"] == pytest.approx(math.exp(val["val_loss"]))
    assert val["val_bpb"] == pytest.approx(val["val_loss"] * len(data.val) / data.meta["val_bytes"] / math.log(2))
    assert (run / "loss.png").stat().st_size > 1000


def _poison(monkeypatch, bad_calls):
    """Make the loss NaN on the given (1-based) forward calls of training."""
    calls = {"n": 0}
    original = DecoderLM.forward

    def forward(self, idx, targets=None, **kwargs):
        loss = original(self, idx, targets, **kwargs)
        if self.training and targets is not None:
            calls["n"] += 1
            if calls["n"] in bad_calls:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(DecoderLM, "forward", forward)


def test_a_non_finite_step_is_skipped_and_counted(tmp_path, char_data, monkeypatch):
    data = TokenData.open(char_data)
    _poison(monkeypatch, {3})
    run = tmp_path / "run"
    result = train(_recipe(data.meta["vocab_size"], max_steps=6, eval_every=0), data, run, progress=False)
    assert result.step == 6
    logged = {r["step"]: r for r in _records(run) if "loss" in r}
    assert logged[3]["loss"] is None and logged[4]["loss"] is not None  # NaN is logged as null
    state = torch.load(run / "checkpoints/last/train_state.pt", weights_only=True)
    assert state["total_bad_steps"] == 1 and state["bad_steps"] == 0
    assert all(torch.isfinite(t).all() for t in weights(run / "checkpoints/last/model.safetensors").values())


def test_too_many_bad_steps_stop_and_keep_the_last_good_checkpoint(tmp_path, char_data, monkeypatch):
    data = TokenData.open(char_data)
    _poison(monkeypatch, set(range(6, 100)))
    run = tmp_path / "run"
    recipe = _recipe(data.meta["vocab_size"], max_steps=20, eval_every=0, save_every=4, max_bad_steps=3)
    with pytest.raises(DecoderLMError, match=r"step 8: 3 steps in a row.*non-finite.*step 4"):
        train(recipe, data, run, progress=False)
    state = torch.load(run / "checkpoints/last/train_state.pt", weights_only=True)
    assert state["step"] == 4
    assert all(torch.isfinite(t).all() for t in weights(run / "checkpoints/last/model.safetensors").values())


def test_time_budget_stops_training_and_logs_throughput(tmp_path, char_data):
    data = TokenData.open(char_data)
    recipe = _recipe(data.meta["vocab_size"], max_steps=100_000, eval_every=0, time_budget="3s", log_every=1,
                     schedule="cosine", min_lr=0.0)
    began = time.perf_counter()
    result = train(recipe, data, tmp_path / "run", progress=False)
    assert time.perf_counter() - began < 3.0 + 5.0  # the budget, plus building the model and data
    assert result.stopped == "time_budget" and 0 < result.step < 100_000
    state = torch.load(tmp_path / "run/checkpoints/last/train_state.pt", weights_only=True)
    # It trains through most of the budget and stops before a step that would not end within it.
    assert state["step"] == result.step and 1.0 <= state["elapsed"] <= 3.0
    logged = [r for r in _records(tmp_path / "run") if "loss" in r]
    assert logged and all(r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 and r["grad_norm"] > 0 for r in logged)
    assert logged[-1]["lr"] < 0.5 * recipe.train.lr  # the cosine decays within the budget, not over 100k steps


@pytest.mark.parametrize("optimizer,schedule", [("muon", "wsd"), ("adamw", "cosine")])
def test_optimizers_and_schedules_train(tmp_path, char_data, optimizer, schedule):
    data = TokenData.open(char_data)
    recipe = _recipe(data.meta["vocab_size"], max_steps=12, eval_every=0, optimizer=optimizer, schedule=schedule,
                     lr=1e-2, min_lr=1e-3, warmup_steps=2, micro_batch_size=4)
    train(recipe, data, tmp_path / "run", progress=False)
    logged = [r for r in _records(tmp_path / "run") if "loss" in r]
    assert logged[-1]["loss"] < logged[0]["loss"]
    assert logged[-1]["lr"] == pytest.approx(1e-2 * (0.1 + 0.9 * (0.5 * (1 + math.cos(math.pi * 9 / 10)))
                                                     if schedule == "cosine" else 0.1 + 0.9 * (1 - 1 / 2)))


def test_a_moe_run_logs_and_evaluates_the_cross_entropy_alone(tmp_path, char_data):
    """The training loss adds the MoE balance term; what is logged and evaluated leaves it out."""
    import torch.nn.functional as F

    data = TokenData.open(char_data)
    recipe = _recipe(data.meta["vocab_size"], max_steps=2, eval_every=2, eval_batches=1, batch_size=4)
    recipe = recipe.replace(model=recipe.model.replace(ffn="moe", n_experts=4, experts_per_token=2,
                                                       moe_aux_loss_coef=0.5))
    result = train(recipe, data, tmp_path / "run", progress=False)
    model = DecoderLM(recipe.model)
    model.load_state_dict(weights(tmp_path / "run/model.safetensors"), strict=False)
    x, y = RandomWindows(data.val, 16, 4, seed=recipe.train.seed).next_batch()
    with torch.no_grad():
        ce = F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
        total = model(x, y).item()
    assert total > ce + 0.4  # the balance loss (about 1 per layer) weighs in the training loss
    assert result.best_val_loss == pytest.approx(ce, rel=1e-5)
