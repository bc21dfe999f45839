"""Unit tests: schedules, optimiser groups, micro-batch splitting, --set parsing, durations."""

from __future__ import annotations

import math

import pytest
import torch

from decoderlm import DecoderLM, DecoderLMError, ModelConfig, TrainConfig, get_recipe
from decoderlm.train.batches import accumulation_steps, micro_batches
from decoderlm.train.optim import build_optimizer, is_muon_param
from decoderlm.train.overrides import apply_overrides, parse_overrides
from decoderlm.config import parse_duration
from decoderlm.train.schedule import horizon, lr_factor

TINY = ModelConfig(vocab_size=32, max_seq_len=8, d_model=16, n_layer=2, n_head=2, position="rope", ffn="swiglu",
                   norm="rmsnorm", qkv_bias=False, attn_out_bias=False, mlp_bias=False, tie_embeddings=True)


def test_warmup_cosine_matches_torch_linear_then_cosine():
    """The seed's schedule: LinearLR(start_factor) for the warm-up, then CosineAnnealingLR to min_lr."""
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=5, warmup_start_factor=0.01, schedule="cosine")
    total = 25
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [
        torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.01, end_factor=1.0, total_iters=5),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - 5, eta_min=0.1)], milestones=[5])
    for step in range(total):
        assert lr_factor(step, cfg, total) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-9), step
        opt.step()
        sched.step()


def test_constant_and_wsd_shapes():
    const = TrainConfig(lr=2.0, schedule="constant", warmup_steps=2, warmup_start_factor=0.0)
    assert [lr_factor(s, const, 10) for s in range(4)] == [0.0, 0.5, 1.0, 1.0]
    wsd = TrainConfig(lr=1.0, min_lr=0.0, schedule="wsd", warmup_steps=0, decay_fraction=0.2)
    factors = [lr_factor(s, wsd, 100) for s in range(100)]
    assert all(f == 1.0 for f in factors[:80]) and factors[90] == pytest.approx(0.5) and factors[99] < 0.1
    assert all(a >= b for a, b in zip(factors, factors[1:]))


def test_time_budget_horizon_and_durations():
    assert horizon(100, 3000, 0.5) == 200  # half the budget used at step 100: plan for ~200 steps
    assert horizon(100, 150, 0.5) == 150 and horizon(0, 3000, 0.0) == 3000
    assert parse_duration("10m") == 600 and parse_duration("90s") == 90 and parse_duration("1h") == 3600
    assert parse_duration("45") == 45 and parse_duration(None) is None
    for bad in ("soon", "-5m", "0"):
        with pytest.raises(DecoderLMError):
            parse_duration(bad)


def test_adamw_decays_matrices_only_and_is_fused():
    model = DecoderLM(TINY)
    opt = build_optimizer(model, TrainConfig(optimizer="adamw", weight_decay=0.1), torch.device("cpu"))
    (adamw,) = opt.optimizers
    decay, no_decay = adamw.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert sum(p.numel() for g in adamw.param_groups for p in g["params"]) == model.num_parameters()
    assert adamw.defaults["fused"] is True


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")
def test_muon_takes_hidden_matrices_adamw_the_rest():
    model = DecoderLM(TINY)
    opt = build_optimizer(model, TrainConfig(optimizer="muon", muon_lr=0.02, lr=1e-3), torch.device("cpu"))
    muon, adamw = opt.optimizers
    assert isinstance(muon, torch.optim.Muon)
    names = {id(p): n for n, p in model.named_parameters()}
    muon_names = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    assert muon_names == {n for n, p in model.named_parameters() if is_muon_param(n, p)}
    assert "tok_emb.weight" not in muon_names and any("qkv" in n for n in muon_names)
    assert {g["base_lr"] for g in muon.param_groups} == {0.02} and {g["base_lr"] for g in adamw.param_groups} == {1e-3}
    x = torch.randint(0, 32, (2, 8))
    before = model.blocks[0].attn.qkv.weight.detach().clone()
    model(x, x).backward()
    opt.step()
    assert not torch.equal(before, model.blocks[0].attn.qkv.weight)
    state = opt.state_dict()
    opt.load_state_dict(state)


def test_micro_batches_cover_the_global_batch_with_mean_weights():
    x = torch.arange(10 * 3).view(10, 3)
    y = x + 1000
    for world, accum in ((1, 1), (1, 3), (2, 2), (3, 2), (4, 3)):
        rows, combined = [], 0.0
        for rank in range(world):
            for mb in micro_batches(x, y, rank, world, accum):
                if mb.rows:
                    rows.extend(mb.x[:, 0].tolist())
                    assert torch.equal(mb.y, mb.x + 1000)
                # a "loss" per row equal to its first token: weight * micro-batch mean, averaged over ranks
                combined += mb.weight * mb.x[:, 0].double().mean().item() / world
        assert sorted(rows) == x[:, 0].tolist(), (world, accum)
        assert combined == pytest.approx(x[:, 0].double().mean().item()), (world, accum)
    pieces = micro_batches(x[:1], y[:1], 1, 2, 1)  # rank 1 of 2 has no row of a 1-row batch
    assert pieces[0].weight == 0.0 and pieces[0].rows == 0 and pieces[0].x.shape[0] == 1
    assert accumulation_steps(32, 8, 2) == 2 and accumulation_steps(32, None, 2) == 1


def test_overrides_parse_and_apply():
    recipe = get_recipe("toy")
    changed = apply_overrides(recipe, parse_overrides(["train.lr=1e-3", "n_layer=2", "model.d_model=4",
                                                      "data.vocab_size=7", "betas=0.8,0.9", "time_budget=90s",
                                                      "max_steps=none", "compile=false"]))
    assert changed.train.lr == 1e-3 and changed.model.n_layer == 2 and changed.model.d_model == 4
    assert changed.data.vocab_size == 7 and changed.train.betas == (0.8, 0.9)
    assert changed.train.time_budget == "90s" and changed.train.max_steps is None and changed.train.compile is False
    assert recipe.train.lr == 0.1  # the preset itself is untouched
    for bad in (["nope=1"], ["train.nope=1"], ["model.n_layer=x"], ["lr"], ["other.lr=1"]):
        with pytest.raises(DecoderLMError):
            parse_overrides(bad)
    with pytest.raises(DecoderLMError):
        apply_overrides(recipe, parse_overrides(["model.position=nowhere"]))


def test_metrics_log_survives_a_line_cut_by_a_crash(tmp_path):
    from decoderlm.rundir import RunDirectory

    with RunDirectory.create(tmp_path / "run") as run:
        run.append_metrics({"step": 1, "loss": 2.0})
        run.append_metrics({"step": 2, "loss": float("nan")})
        with open(run.metrics_file, "a") as f:
            f.write('{"step": 3, "lo')  # killed mid-write
        assert run.read_metrics() == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": None}]
        run.truncate_metrics(1)  # what a resume from step 1 does
        assert run.read_metrics() == [{"step": 1, "loss": 2.0}]


def test_flops_per_token_counts_each_matmul_weight_once():
    """PaLM's 6 N + 12 L H D T; N: the matmul weights (trainer and bench share this count)."""
    from decoderlm.train.mfu import flops_per_token

    d, f = TINY.d_model, TINY.d_ff
    per_layer = d * 3 * d + d * d + d * 2 * f + f * d  # qkv, proj, gate_up, down
    head = TINY.vocab_size * d  # tied: the embedding lookup is no matmul, the head counts once
    attention = 12 * TINY.n_layer * TINY.n_head * TINY.head_dim * 8
    assert flops_per_token(DecoderLM(TINY), 8) == 6 * (TINY.n_layer * per_layer + head) + attention
    untied = DecoderLM(TINY.replace(tie_embeddings=False))  # the same matmuls: the embedding is a lookup
    assert flops_per_token(untied, 8) == flops_per_token(DecoderLM(TINY), 8)
    moe = TINY.replace(ffn="moe", n_experts=4, experts_per_token=2)
    experts = 4 * 3 * d * moe.d_ff  # gate_up and down of each expert; a token uses 2 of 4
    expected = 6 * (moe.n_layer * (d * 3 * d + d * d + d * 4 + experts / 2) + head) + attention
    assert flops_per_token(DecoderLM(moe), 8) == pytest.approx(expected)
