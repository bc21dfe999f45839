"""LoRA applied from outside: settings checked in one line, adapters on the fused q/k/v and gate/up
matrices equal separate per-projection adapters, only adapters train, the adapters' state dict
round-trips with shape checks, and merging gives a plain DecoderLM with the same logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from decoderlm import DecoderLM, DecoderLMError, ModelConfig
from decoderlm.bench.peers import SIZES
from decoderlm.lora import (LoRAConfig, LoRALinear, apply_lora, count_parameters, load_lora_state_dict,
                            lora_config_of, lora_layers, lora_state_dict, merge_lora, parse_targets)

LLAMA = dict(vocab_size=64, max_seq_len=32, d_model=32, n_layer=2, n_head=4, n_kv_head=2, position="rope",
             norm="rmsnorm", ffn="swiglu", d_ff=48, qkv_bias=True, attn_out_bias=False, mlp_bias=False,
             tie_embeddings=False)


def _model(seed=0, **changes) -> DecoderLM:
    torch.manual_seed(seed)
    return DecoderLM(ModelConfig(**(LLAMA | changes))).eval()


def _randomise_adapters(model, seed=1, scale=0.1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)


def _tokens(batch=2, length=10):
    return torch.randint(0, 64, (batch, length), generator=torch.Generator().manual_seed(9))


@pytest.mark.parametrize("kwargs,message", [
    (dict(rank=0), "rank must be a positive integer"),
    (dict(rank=-2), "rank must be a positive integer"),
    (dict(rank=2.5), "rank must be a positive integer"),
    (dict(rank=4, alpha=0), "alpha must be a positive number"),
    (dict(rank=4, dropout=1.0), "dropout must be a number in"),
    (dict(rank=4, targets=("q", "qkv")), "unknown LoRA target 'qkv'"),
    (dict(rank=4, targets=("q", "head")), "selected with head=True"),
    (dict(rank=4, targets=("q", "q")), "twice"),
    (dict(rank=4, targets=()), "at least one target"),
])
def test_bad_settings_are_one_line(kwargs, message):
    with pytest.raises(DecoderLMError, match=message) as err:
        LoRAConfig(**kwargs)
    assert "\n" not in str(err.value)


def test_targets_from_a_set_value():
    assert parse_targets("v, q,down") == (("q", "v", "down"), False)
    assert parse_targets("q,k,v,o,gate,up,down,head") == (LoRAConfig(rank=1).targets, True)
    assert LoRAConfig(rank=2, targets=(), head=True).head  # the head alone
    with pytest.raises(DecoderLMError, match="unknown LoRA target 'proj'"):
        parse_targets("q,proj")
    config = LoRAConfig(rank=8, alpha=16, dropout=0.05, targets=("q", "v"), rslora=True)
    assert LoRAConfig.from_dict(config.to_dict()) == config and config.scale == pytest.approx(16 / 8 ** 0.5)
    assert LoRAConfig(rank=8, alpha=16).scale == 2.0


def test_fresh_adapters_change_nothing_and_only_adapters_train():
    model = _model()
    plain_keys = set(model.state_dict())
    idx = _tokens()
    with torch.no_grad():
        before = model(idx)
    apply_lora(model, LoRAConfig(rank=4, head=True))
    with torch.no_grad():
        assert torch.equal(model(idx), before)  # B starts at zero
    keys = set(model.state_dict())
    assert plain_keys <= keys and all(".adapters." in k for k in keys - plain_keys)  # base keys unchanged
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(lora_state_dict(model)) and trainable
    assert set(lora_layers(model)) == {"blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.ffn.gate_up",
                                       "blocks.0.ffn.down", "blocks.1.attn.qkv", "blocks.1.attn.proj",
                                       "blocks.1.ffn.gate_up", "blocks.1.ffn.down", "lm_head"}
    model.train()
    F.cross_entropy(model(idx).flatten(0, 1), idx.flatten()).backward()
    for name, p in model.named_parameters():
        if name in trainable:
            assert p.grad is not None and (not name.endswith(".B") or p.grad.abs().sum() > 0), name
        else:
            assert p.grad is None, name


def test_fused_adapters_equal_separate_projection_adapters():
    """q, k and v (GQA: 32, 16 and 16 rows) each with its own A and B, as PEFT's q_proj/k_proj/v_proj."""
    model = _model()
    apply_lora(model, LoRAConfig(rank=3, alpha=6, targets=("q", "k", "v", "gate", "up")))
    _randomise_adapters(model)
    x = torch.randn(2, 5, 32)
    for layer, splits in ((model.blocks[0].attn.qkv, (32, 16, 16)), (model.blocks[0].ffn.gate_up, (48, 48))):
        weights, biases = layer.weight.split(splits), (layer.bias.split(splits) if layer.bias is not None
                                                       else [None] * len(splits))
        separate = [F.linear(x, w, b) + 2.0 * F.linear(F.linear(x, adapter.A), adapter.B)
                    for w, b, adapter in zip(weights, biases, layer.adapters.values())]
        with torch.no_grad():
            torch.testing.assert_close(layer(x), torch.cat(separate, -1), atol=1e-6, rtol=0)


def test_untargeted_parts_of_a_fused_matrix_stay_the_base():
    model = _model()
    apply_lora(model, LoRAConfig(rank=2, targets=("k",)))
    _randomise_adapters(model)
    layer = model.blocks[0].attn.qkv
    assert list(layer.adapters) == ["k"]
    x = torch.randn(3, 32)
    with torch.no_grad():
        out, base = layer(x), F.linear(x, layer.weight, layer.bias)
    assert torch.equal(out[:, :32], base[:, :32]) and torch.equal(out[:, 48:], base[:, 48:])
    assert not torch.allclose(out[:, 32:48], base[:, 32:48])


@pytest.mark.parametrize("changes,config", [
    ({}, LoRAConfig(rank=4, alpha=8, head=True)),
    (dict(tie_embeddings=True, qkv_bias=False), LoRAConfig(rank=4, alpha=8, rslora=True)),
    (dict(position="learned", norm="layernorm", ffn="mlp", d_ff=64, activation="gelu_tanh", n_kv_head=4),
     LoRAConfig(rank=2, alpha=4, targets=("q", "k", "v", "o", "up", "down"))),
], ids=["llama-gqa-head", "tied", "gpt-mlp"])
def test_merged_model_equals_adapted_model(changes, config):
    model = _model(**changes)
    apply_lora(model, config)
    _randomise_adapters(model)
    idx = _tokens()
    plain = merge_lora(model)
    assert type(plain) is DecoderLM and not lora_layers(plain) and all(p.requires_grad for p in plain.parameters())
    assert lora_layers(model)  # the adapted model is left as it was
    assert (plain.lm_head.weight is plain.tok_emb.weight) == model.config.tie_embeddings
    with torch.no_grad():
        adapted = model(idx)
        assert (adapted - _model(**changes)(idx)).abs().max() > 0.1  # the adapters matter
        torch.testing.assert_close(plain(idx), adapted, atol=1e-5, rtol=0)


def test_weight_with_adapters_is_what_the_layer_computes():
    """Code that reads the head's weight (the chunked head + cross-entropy) can use this instead."""
    model = apply_lora(_model(), LoRAConfig(rank=4, targets=("q",), head=True))
    _randomise_adapters(model)
    h = torch.randn(3, 32)
    head = model.lm_head
    torch.testing.assert_close(F.linear(h, head.weight_with_adapters()), head(h), atol=1e-6, rtol=0)
    F.linear(h, head.weight_with_adapters()).sum().backward()
    assert head.adapters["head"].B.grad.abs().sum() > 0 and head.weight.grad is None


def test_base_held_in_bfloat16():
    model = _model()
    apply_lora(model, LoRAConfig(rank=4), base_dtype=torch.bfloat16)
    _randomise_adapters(model)
    layer = model.blocks[0].attn.qkv
    assert layer.weight.dtype == layer.bias.dtype == torch.bfloat16 and layer.adapters["q"].A.dtype == torch.float32
    assert model.tok_emb.weight.dtype == torch.float32
    idx = _tokens()
    with torch.no_grad():
        logits = model(idx)
        plain = merge_lora(model)
        assert plain.blocks[0].attn.qkv.weight.dtype == torch.float32
        torch.testing.assert_close(plain(idx), logits, atol=0.05, rtol=0.05)  # bf16 activations in the base products
    model.train()
    F.cross_entropy(model(idx).flatten(0, 1), idx.flatten()).backward()
    assert layer.adapters["q"].B.grad.dtype == torch.float32 and layer.weight.grad is None


def test_adapter_state_round_trips_and_refuses_another_base():
    config = LoRAConfig(rank=4, targets=("q", "v", "down"))
    model = apply_lora(_model(), config)
    _randomise_adapters(model)
    state = lora_state_dict(model)
    assert set(state) == {f"blocks.{i}.{m}" for i in (0, 1) for m in (
        "attn.qkv.adapters.q.A", "attn.qkv.adapters.q.B", "attn.qkv.adapters.v.A", "attn.qkv.adapters.v.B",
        "ffn.down.adapters.down.A", "ffn.down.adapters.down.B")}
    assert state["blocks.0.attn.qkv.adapters.v.B"].shape == (16, 4)  # 2 KV heads x 8
    fresh = apply_lora(_model(), config, generator=torch.Generator().manual_seed(5))
    load_lora_state_dict(fresh, state)
    idx = _tokens()
    with torch.no_grad():
        torch.testing.assert_close(fresh(idx), model(idx), atol=0, rtol=0)

    wider = apply_lora(_model(d_ff=64), config)
    with pytest.raises(DecoderLMError, match=r"different base model: blocks.0.ffn.down.adapters.down.A has shape "
                                             r"\(4, 48\) there and \(4, 64\) here"):
        load_lora_state_dict(wider, state)
    other_targets = apply_lora(_model(), LoRAConfig(rank=4, targets=("q", "v")))
    with pytest.raises(DecoderLMError, match="unexpected.*other LoRA targets"):
        load_lora_state_dict(other_targets, state)
    with pytest.raises(DecoderLMError, match="apply_lora first"):
        load_lora_state_dict(_model(), state)


def test_same_generator_gives_the_same_adapters():
    a = apply_lora(_model(), LoRAConfig(rank=4), generator=torch.Generator().manual_seed(3))
    b = apply_lora(_model(), LoRAConfig(rank=4), generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(t, lora_state_dict(b)[k]) for k, t in lora_state_dict(a).items())
    assert lora_config_of(a) == LoRAConfig(rank=4) and lora_config_of(_model()) is None


def test_dropout_draws_in_training_only():
    model = apply_lora(_model(), LoRAConfig(rank=4, dropout=0.5))
    _randomise_adapters(model)
    idx = _tokens()
    with torch.no_grad():
        eval_a, eval_b = model(idx), model(idx)
        model.train()
        train_a, train_b = model(idx), model(idx)
    assert torch.equal(eval_a, eval_b) and not torch.equal(train_a, train_b)


def test_rank_8_on_the_6x512_llama_trains_under_2_percent():
    """The benchmark's 6x512 Llama (decoderlm.bench.peers: 6 layers, 512 wide, 8 heads / 4 KV heads,
    d_ff 1408, vocabulary 8192, untied head): rank 8 on all seven projections."""
    size = SIZES["6x512"]
    config = ModelConfig(vocab_size=size.vocab_size, max_seq_len=64, d_model=size.d_model, n_layer=size.n_layer,
                         n_head=size.n_head, n_kv_head=size.n_kv_head, d_ff=size.d_ff, position="rope",
                         norm="rmsnorm", ffn="swiglu", qkv_bias=False, attn_out_bias=False, mlp_bias=False,
                         tie_embeddings=False)
    torch.manual_seed(0)
    model = apply_lora(DecoderLM(config), LoRAConfig(rank=8))
    count = count_parameters(model)
    # Per layer: q 8*(512+512), k and v 8*(512+256), o 8*(512+512), gate and up 8*(512+1408), down 8*(1408+512).
    assert count.trainable == 6 * 8 * (1024 + 768 + 768 + 1024 + 3 * 1920) == 448_512
    assert count.fraction < 0.02, count.summary()
    print(count.summary())

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    # In eval mode: the same gradients here (no dropout), without compiling the CPU training kernels.
    idx = torch.randint(0, size.vocab_size, (1, 16))
    loss = model(idx, idx)
    loss.backward()
    optimizer.step()
    held = {id(p) for p in optimizer.state}
    assert held == {id(p) for p in model.parameters() if p.requires_grad}
    assert sum(t.numel() for s in optimizer.state.values() for t in s.values() if t.dim()) == 2 * count.trainable
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


def test_targets_the_model_lacks_and_unsupported_models_are_one_line():
    gpt = _model(position="learned", norm="layernorm", ffn="mlp", d_ff=64, n_kv_head=4)
    with pytest.raises(DecoderLMError, match="target 'gate' matches no layer of this model \\(ffn=mlp\\); its "
                                             "targets are: q, k, v, o, up, down, head"):
        apply_lora(gpt, LoRAConfig(rank=2))
    assert not lora_layers(gpt) and all(p.requires_grad for p in gpt.parameters())  # refused before any change
    with pytest.raises(DecoderLMError, match="mixture-of-experts"):
        apply_lora(_model(ffn="moe", n_experts=2, experts_per_token=1), LoRAConfig(rank=2))
    with pytest.raises(DecoderLMError, match="tied embeddings"):
        apply_lora(_model(tie_embeddings=True), LoRAConfig(rank=2, head=True))
    twice = apply_lora(_model(), LoRAConfig(rank=2))
    with pytest.raises(DecoderLMError, match="already has LoRA adapters"):
        apply_lora(twice, LoRAConfig(rank=2))
    with pytest.raises(DecoderLMError, match="no LoRA adapters to merge"):
        merge_lora(_model())
    assert isinstance(twice.blocks[0].attn.qkv, LoRALinear)


def test_adapted_and_merged_models_decode_the_same_tokens():
    """Generation runs through the KV cache; the adapters apply to every cached step."""
    from decoderlm.generate.api import generate

    model = apply_lora(_model(), LoRAConfig(rank=4, alpha=8))
    _randomise_adapters(model)
    prompt = _tokens(batch=1, length=4)
    with torch.no_grad():
        ours = generate(model, prompt, 12, temperature=0)
        merged = generate(merge_lora(model), prompt, 12, temperature=0)
        base = generate(_model(), prompt, 12, temperature=0)
    assert torch.equal(ours, merged) and not torch.equal(ours, base)


def test_a_head_adapter_trains_through_the_models_loss():
    """model(idx, targets) reaches the head's adapter: its B gets a gradient."""
    model = DecoderLM(ModelConfig(vocab_size=50, max_seq_len=16, d_model=32, n_layer=1, n_head=2, position="rope",
                                  norm="rmsnorm", ffn="swiglu", tie_embeddings=False))
    apply_lora(model, LoRAConfig(rank=2, targets=("q",), head=True))
    idx = torch.randint(0, 50, (2, 8))
    model(idx, idx).backward()
    grads = [p.grad for n, p in model.named_parameters() if n.startswith("lm_head.") and p.requires_grad]
    assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
