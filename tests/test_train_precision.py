"""bf16 training with fp32 master weights: gradients accumulate in fp32, the bf16 copy follows
the masters, and checkpoints hold the fp32 masters."""

import pytest
import torch
from safetensors.torch import load_file

from decoderlm.config import ModelConfig
from decoderlm.presets import get_recipe
from decoderlm.data.shards import TokenData
from decoderlm.model import DecoderLM
from decoderlm.rundir import RunDirectory
from decoderlm.train.loop import Trainer
from decoderlm.train.precision import MasterWeights, use_master_weights
from test_train_support import char_data, run_cli, tiny_sets  # noqa: F401


def _model():
    torch.manual_seed(0)
    return DecoderLM(ModelConfig(vocab_size=32, d_model=16, n_layer=1, n_head=2, max_seq_len=8, tie_embeddings=True))


def test_compute_copy_is_bf16_and_separate():
    master = _model()
    mw = MasterWeights(master)
    assert all(p.dtype == torch.bfloat16 for p in mw.compute.parameters())
    assert all(p.dtype == torch.float32 for p in master.parameters())
    assert mw.compute.lm_head.weight is mw.compute.tok_emb.weight  # the tie survives the copy
    with torch.no_grad():
        master.tok_emb.weight.add_(1e-3)
    assert not torch.equal(mw.compute.tok_emb.weight.float(), master.tok_emb.weight.to(torch.bfloat16).float())
    mw.update_compute()
    assert torch.equal(mw.compute.tok_emb.weight, master.tok_emb.weight.to(torch.bfloat16))


def test_gradients_accumulate_in_float32():
    master = _model()
    mw = MasterWeights(master)
    idx = torch.randint(0, 32, (2, 8))
    expected = None
    for half in (idx[:1], idx[1:]):
        mw.compute(half[:, :-1], half[:, 1:]).backward()
        grads = [p.grad.float().clone() for p in mw.compute.parameters()]
        expected = grads if expected is None else [a + b for a, b in zip(expected, grads)]
        mw.collect_grads()
        assert all(p.grad is None for p in mw.compute.parameters())
    for p, want in zip(master.parameters(), expected):
        assert p.grad.dtype == torch.float32
        torch.testing.assert_close(p.grad, want, rtol=0, atol=0)


def test_master_weights_refused_under_torchrun(monkeypatch):
    """Checked with the other train settings, before anything is written, on every rank alike
    (`decoderlm train` under torchrun printed the same one line from both ranks, exit 2)."""
    from decoderlm.errors import DecoderLMError
    from decoderlm.train.preflight import check_can_train

    recipe = get_recipe("toy")
    recipe = recipe.replace(train=recipe.train.replace(master_weights=True))
    check_can_train(recipe)  # one process: fine
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DecoderLMError, match="train.master_weights is for single-process training"):
        check_can_train(recipe)
    check_can_train(recipe.replace(train=recipe.train.replace(master_weights=None)))  # unset: autocast


def test_master_weights_where_measured():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_master_weights(None, torch.bfloat16, cpu, distributed=False)
    assert not use_master_weights(None, torch.bfloat16, cpu, distributed=True)
    assert not use_master_weights(None, torch.bfloat16, cuda, distributed=False)
    assert not use_master_weights(None, None, cpu, distributed=False)  # fp32: nothing to keep
    assert not use_master_weights(False, torch.bfloat16, cpu, distributed=False)


def _sets(data_dir, **extra):
    return tiny_sets(model__vocab_size=TokenData.open(data_dir).meta["vocab_size"], **extra)


def test_bf16_run_saves_float32_masters(tmp_path, char_data):
    run = tmp_path / "run"
    sets = _sets(char_data, train__dtype="bfloat16", train__max_steps=10, train__eval_every=5, train__lr=1e-3)
    assert run_cli(["train", "--data", char_data, "--out", run, "--no-progress", "--no-samples", *sets])[0] == 0
    weights = load_file(run / "checkpoints/last/model.safetensors")
    assert all(w.dtype == torch.float32 for w in weights.values())
    # Norm gains start at exactly 1.0; updates of ~lr are below bf16's spacing near 1 (2^-7), so a
    # gain that moved to a value bf16 cannot hold was kept by the fp32 masters.
    gain = weights["blocks.0.norm1.weight"]
    assert (gain != 1.0).any()
    assert not torch.equal(gain, gain.to(torch.bfloat16).float())


@pytest.mark.parametrize("setting,expect_master", [(None, True), (False, False)])
def test_trainer_trains_a_bf16_copy_by_default_on_cpu(tmp_path, char_data, setting, expect_master):
    data = TokenData.open(char_data)
    recipe = get_recipe("toy")
    recipe = recipe.replace(model=recipe.model.replace(vocab_size=data.meta["vocab_size"], max_seq_len=16),
                            train=recipe.train.replace(dtype="bfloat16", master_weights=setting, max_steps=2,
                                                       eval_every=0, compile=False))
    trainer = Trainer(recipe, data, RunDirectory.create(tmp_path / "run"), progress=False)
    trained = trainer.compute_model
    assert (trainer.master is not None) == expect_master
    assert next(trained.parameters()).dtype == (torch.bfloat16 if expect_master else torch.float32)
    assert next(trainer.model.parameters()).dtype == torch.float32
    assert trainer.autocast_dtype == (None if expect_master else torch.bfloat16)
    result = trainer.fit()
    assert result.step == 2
    if expect_master:  # the copy that computes is the masters, rounded, after the last update
        for master, copy in zip(trainer.model.parameters(), trained.parameters()):
            assert torch.equal(copy, master.detach().to(torch.bfloat16))
