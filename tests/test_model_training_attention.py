"""The hand-written attention backward used in training (decoderlm.kernels) equals autograd
through torch's SDPA."""

import copy

import pytest
import torch
import torch.nn.functional as F

from decoderlm.compile_support import can_compile
from decoderlm.config import ModelConfig
from decoderlm.kernels import apply_cpu_kernels, compiled
from decoderlm.kernels.layers import CPUAttention
from decoderlm.kernels.training_attention import attention_backward, causal_attention, use_fast_backward
from decoderlm.model import DecoderLM
from decoderlm.model.attention import Attention


def _inputs(dtype, heads=4, kv_heads=2, B=2, T=16, D=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    make = lambda h: torch.randn(B, h, T, D, generator=gen).to(dtype).requires_grad_()  # noqa: E731
    return make(heads), make(kv_heads), make(kv_heads), torch.randn(B, heads, T, D, generator=gen).to(dtype)


def _sdpa_grads(q, k, v, grad_out):
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])
    return (out, *torch.autograd.grad(out, (q, k, v), grad_out))


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (4, 1)])  # MHA, GQA, MQA
def test_backward_formula_matches_autograd_in_float32(heads, kv_heads):
    q, k, v, grad_out = _inputs(torch.float32, heads, kv_heads)
    out, *expected = _sdpa_grads(q, k, v, grad_out)
    group = heads // kv_heads
    _, logsumexp = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), 0.0, True, scale=q.shape[-1] ** -0.5)[:2]
    got = attention_backward(q.detach(), k.detach(), v.detach(), out.detach(), logsumexp, grad_out, q.shape[-1] ** -0.5)
    for name, a, b in zip("qkv", got, expected):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=f"grad of {name}")


@pytest.mark.skipif(not can_compile(torch.device("cpu")), reason="needs a C++ compiler for inductor")
def test_bf16_training_path_matches_sdpa(monkeypatch):
    monkeypatch.setattr(compiled, "MIN_ELEMENTS", 0)  # tiny shapes, compiled anyway
    q, k, v, grad_out = _inputs(torch.bfloat16)
    assert use_fast_backward(q, k, dropout=0.0)
    out_ref, *ref = _sdpa_grads(q, k, v, grad_out)
    out = causal_attention(q, k, v)
    got = torch.autograd.grad(out, (q, k, v), grad_out)
    torch.testing.assert_close(out, out_ref, atol=0, rtol=0)  # the same flash forward
    for name, a, b in zip("qkv", got, ref):
        scale = b.float().abs().max()
        assert (a.float() - b.float()).abs().max() / scale < 0.02, f"grad of {name}"


def test_fast_path_only_where_it_applies(monkeypatch):
    monkeypatch.setattr(compiled, "MIN_ELEMENTS", 0)  # tiny shapes, compiled anyway
    q, k, _, _ = _inputs(torch.bfloat16)
    with torch.no_grad():
        assert not use_fast_backward(q, k, 0.0)  # inference: SDPA
    assert not use_fast_backward(q, k, dropout=0.1)
    assert not use_fast_backward(q.float(), k.float(), 0.0)  # fp32: SDPA
    assert not use_fast_backward(q, k[:, :, :4], 0.0)  # keys from a cache
    monkeypatch.setattr(compiled, "MIN_ELEMENTS", q.numel() + 1)
    assert not use_fast_backward(q, k, 0.0)  # too small for compiling to pay off


@pytest.mark.skipif(not can_compile(torch.device("cpu")), reason="needs a C++ compiler for inductor")
def test_cpu_attention_runs_the_same_forward_as_sdpa_and_close_gradients(monkeypatch):
    """CPUAttention.attend against the reference Attention.attend on the same bf16 q, k, v."""
    monkeypatch.setattr(compiled, "MIN_ELEMENTS", 0)
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layer=1, n_head=4, n_kv_head=2, max_seq_len=16)
    reference = Attention(cfg)
    fast = apply_cpu_kernels(Attention(cfg))
    assert type(fast) is CPUAttention
    q, k, v, grad_out = _inputs(torch.bfloat16)
    out_ref, *ref = _sdpa_grads(q, k, v, grad_out)
    assert torch.equal(reference.attend(q, k, v, None), out_ref)
    out = fast.attend(q, k, v, None)
    got = torch.autograd.grad(out, (q, k, v), grad_out)
    assert torch.equal(out, out_ref)  # the same flash forward kernel
    for name, a, b in zip("qkv", got, ref):
        assert (a.float() - b.float()).abs().max() / b.float().abs().max() < 0.02, f"grad of {name}"


@pytest.mark.skipif(not can_compile(torch.device("cpu")), reason="needs a C++ compiler for inductor")
def test_model_gradients_under_autocast_match_the_reference(monkeypatch):
    monkeypatch.setattr(compiled, "MIN_ELEMENTS", 0)  # tiny shapes, compiled anyway
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layer=2, n_head=4, n_kv_head=2, max_seq_len=16,
                      position="rope", norm="rmsnorm", ffn="swiglu")
    torch.manual_seed(0)
    reference = DecoderLM(cfg)
    fast = apply_cpu_kernels(copy.deepcopy(reference))
    idx = torch.randint(0, 64, (2, 16))

    def grads(model):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}

    loss_fast, fast_grads = grads(fast)
    loss_ref, ref_grads = grads(reference)
    assert abs(loss_fast - loss_ref) < 1e-2 * loss_ref  # bf16 rounding in the fused kernels
    for name in ref_grads:
        scale = ref_grads[name].abs().max().clamp(min=1e-6)
        assert (fast_grads[name] - ref_grads[name]).abs().max() / scale < 0.03, name
