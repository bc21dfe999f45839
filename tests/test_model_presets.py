"""Every preset builds, runs forward and backward, and has the exact parameter counts of its seed."""

import pytest
import torch

from decoderlm import DecoderLM, DecoderLMError, ModelConfig, get_recipe, preset_names
from decoderlm.cli import main
from decoderlm.model import parameter_breakdown


def test_preset_list():
    assert {"toy", "llama-gutenberg", "llama-moe", "gpt", "gpt2", "tinystories-6l", "shakespeare"} <= set(preset_names())


def test_toy_has_37_parameters():
    parts = parameter_breakdown(DecoderLM(get_recipe("toy").model))
    assert (parts["embedding"], parts["attention"], parts["head"], parts["total"]) == (10, 12, 15, 37)


def test_tinystories_counts_with_gpt2_vocabulary():
    parts = parameter_breakdown(DecoderLM(get_recipe("tinystories-6l").model))
    assert parts["embedding"] == 25_731_584
    assert parts["blocks"] == 18_905_088
    assert parts["head"] == 25_781_841
    assert parts["total"] == 70_419_537


def test_gpt2_has_124m():
    assert DecoderLM(get_recipe("gpt2").model).num_parameters() == 124_439_808


def test_seed_hyperparameters():
    llama = get_recipe("llama-gutenberg")
    m, t = llama.model, llama.train
    assert (m.n_layer, m.n_head, m.n_kv_head, m.d_model, m.max_seq_len) == (8, 8, 4, 768, 512)
    assert (m.position, m.norm, m.ffn, m.pre_norm, m.attn_dropout) == ("rope", "rmsnorm", "swiglu", True, 0.1)
    assert (t.lr, t.warmup_steps, t.epochs, t.batch_size, t.grad_clip) == (5e-4, 2000, 2, 32, 6.0)
    assert llama.data.vocab_size == 10000
    moe = get_recipe("llama-moe")
    assert (moe.model.ffn, moe.model.n_experts, moe.model.experts_per_token, moe.train.dtype) == ("moe", 8, 3, "bfloat16")
    ts = get_recipe("tinystories-6l")
    assert (ts.model.position, ts.model.pre_norm, ts.model.activation, ts.model.dropout) == ("sinusoidal", False, "relu", 0.2)
    assert (ts.train.batch_size, ts.train.lr, ts.train.max_steps, ts.train.eval_every, ts.train.early_stop_patience) == (128, 3e-4, 5000, 500, 5)
    toy = get_recipe("toy")
    assert (toy.train.lr, toy.train.epochs, toy.model.d_model) == (0.1, 30, 2)


@pytest.mark.parametrize("name", preset_names())
def test_preset_forward_backward_and_info(name, capsys):
    cfg = get_recipe(name).model
    if cfg.n_layer > 4:  # keep the suite fast: same architecture, fewer layers and a short sequence
        cfg = cfg.replace(n_layer=2)
    torch.manual_seed(0)
    model = DecoderLM(cfg)
    idx = torch.randint(0, cfg.vocab_size, (2, min(8, cfg.max_seq_len)))
    logits = model(idx)
    assert logits.shape == (*idx.shape, cfg.vocab_size)
    total = model(idx[:, :-1], idx[:, 1:])
    total.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert main(["info", name]) == 0
    out = capsys.readouterr().out
    assert "total" in out and "embedding" in out


def test_replace_rederives_dependent_fields_unless_set():
    cfg = ModelConfig(d_model=64, n_head=4)
    wider = cfg.replace(n_head=8)
    assert (wider.n_kv_head, wider.head_dim) == (8, 8)
    gqa = ModelConfig(d_model=64, n_head=8, n_kv_head=2).replace(d_model=128)
    assert (gqa.n_kv_head, gqa.head_dim, gqa.d_ff) == (2, 16, 512)


@pytest.mark.parametrize("bad", [
    dict(n_head=4, n_kv_head=3),
    dict(position="alibi"),
    dict(ffn="moe", n_experts=2, experts_per_token=3),
    dict(d_model=30, n_head=4),
])
def test_invalid_configs_are_clear_errors(bad):
    with pytest.raises(DecoderLMError):
        ModelConfig(**{"d_model": 32, **bad})


def test_unknown_config_key_is_refused():
    with pytest.raises(DecoderLMError, match="unknown ModelConfig key"):
        ModelConfig.from_dict({"d_modle": 32})
