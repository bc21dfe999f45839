"""The training-time kernels (chunked head + cross-entropy, compiled RMSNorm / SwiGLU / RoPE) give
the results of the plain ops they replace."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from decoderlm.compile_support import can_compile
from decoderlm.config import ModelConfig
from decoderlm.model import DecoderLM
from decoderlm.model import linear_cross_entropy as lce

needs_compiler = pytest.mark.skipif(not can_compile(torch.device("cpu")), reason="needs a C++ compiler for inductor")


def _head_inputs(dtype=torch.float32, N=37, C=16, V=50, bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, C, generator=gen).to(dtype).requires_grad_()
    weight = (torch.randn(V, C, generator=gen) * 0.3).to(dtype).requires_grad_()
    b = (torch.randn(V, generator=gen) * 0.1).to(dtype).requires_grad_() if bias else None
    targets = torch.randint(0, V, (N,), generator=gen)
    targets[[3, 11]] = -100  # ignored rows
    return hidden, weight, b, targets


@pytest.mark.parametrize("chunk_bytes", [4 * 50 * 8, 1 << 20])  # 8 rows per chunk (5 chunks), one chunk
@pytest.mark.parametrize("bias", [True, False])
def test_chunked_loss_and_gradients_equal_plain_cross_entropy(monkeypatch, chunk_bytes, bias):
    monkeypatch.setattr(lce, "CHUNK_BYTES", chunk_bytes)
    hidden, weight, b, targets = _head_inputs(bias=bias)
    inputs = [t for t in (hidden, weight, b) if t is not None]
    plain = F.cross_entropy(F.linear(hidden, weight, b), targets, ignore_index=-100)
    expected = torch.autograd.grad(plain * 2.5, inputs)  # a non-unit upstream gradient
    fused = lce.linear_cross_entropy(hidden, weight, b, targets)
    got = torch.autograd.grad(fused * 2.5, inputs)
    torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-6)
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)


def test_many_bf16_chunks_sum_the_head_gradient_in_float32(monkeypatch):
    """bf16 rounding once, not once per chunk: no worse than the single plain matmul."""
    monkeypatch.setattr(lce, "CHUNK_BYTES", 1)  # as many chunks as allowed
    hidden, weight, _, targets = _head_inputs(N=512, C=32, V=64, bias=False)
    exact = torch.autograd.grad(F.cross_entropy(F.linear(hidden, weight), targets), weight)[0]
    h16, w16 = hidden.detach().bfloat16().requires_grad_(), weight.detach().bfloat16().requires_grad_()
    plain = torch.autograd.grad(F.cross_entropy(F.linear(h16, w16).float(), targets), w16)[0]
    chunked = torch.autograd.grad(lce.linear_cross_entropy(h16, w16, None, targets), w16)[0]
    assert len(lce._Rows(h16, w16, None, targets, -100, torch.bfloat16).chunks()) == lce.MAX_CHUNKS
    error = lambda g: ((g.float() - exact).abs().max() / exact.abs().max()).item()  # noqa: E731
    assert error(chunked) <= 1.5 * error(plain)


def test_evaluation_needs_no_gradients_and_ignored_rows_count_for_nothing(monkeypatch):
    def no_gradients_in_evaluation(*args):
        raise AssertionError("the gradient kernel ran under no_grad")

    monkeypatch.setattr(lce, "_chunk_kernel", no_gradients_in_evaluation)
    hidden, weight, b, targets = _head_inputs()
    with torch.no_grad():
        loss = lce.linear_cross_entropy(hidden, weight, b, targets)
        plain = F.cross_entropy(F.linear(hidden, weight, b), targets)
        assert torch.allclose(loss, plain, atol=1e-6)
        assert lce.linear_cross_entropy(hidden, weight, b, torch.full_like(targets, -100)).item() == 0.0


def test_under_autocast_the_head_runs_in_bf16_and_gradients_keep_the_weights_dtype(monkeypatch):
    seen = []
    kernel = lce._chunk_kernel

    def recording_kernel(logits, *args):
        seen.append(logits.dtype)
        return kernel(logits, *args)

    monkeypatch.setattr(lce, "_chunk_kernel", recording_kernel)
    hidden, weight, b, targets = _head_inputs(bias=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = F.cross_entropy(F.linear(hidden, weight).float(), targets)
        fused = lce.linear_cross_entropy(hidden, weight, None, targets)
    expected = torch.autograd.grad(plain, (hidden, weight))
    got = torch.autograd.grad(fused, (hidden, weight))
    assert seen and set(seen) == {torch.bfloat16}
    assert abs(fused.item() - plain.item()) < 1e-2
    for a, e in zip(got, expected):
        assert a.dtype == torch.float32
        assert (a - e).abs().max() / e.abs().max() < 0.02


def _llama(**changes):
    torch.manual_seed(0)
    return DecoderLM(ModelConfig(vocab_size=64, d_model=32, n_layer=2, n_head=4, n_kv_head=2, max_seq_len=16,
                                 position="rope", norm="rmsnorm", ffn="swiglu", **changes))


def _loss_and_grads(model, idx):
    model.zero_grad()
    loss, _ = model.loss(idx[:, :-1], idx[:, 1:])
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@needs_compiler
def test_compiled_kernels_match_the_plain_model(monkeypatch):
    """fp32, so the comparison is tight: RMSNorm, SwiGLU and RoPE kernels on, then all off."""
    monkeypatch.setattr("decoderlm.model.compiled_kernels.MIN_ELEMENTS", 0)  # tiny shapes, compiled anyway
    model = _llama()
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    loss_k, grads_k = _loss_and_grads(model, idx)
    monkeypatch.setattr("decoderlm.model.compiled_kernels.training_on_cpu", lambda x: False)
    loss_p, grads_p = _loss_and_grads(model, idx)
    torch.testing.assert_close(loss_k, loss_p, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_k, grads_p):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_kernels_stay_out_of_inference():
    """No gradients: the plain ops (decoding shapes change every step, so nothing is compiled)."""
    from decoderlm.model.compiled_kernels import training_on_cpu

    x = torch.randn(2, 3, requires_grad=True)
    assert training_on_cpu(x)
    with torch.no_grad():
        assert not training_on_cpu(x)
    assert not training_on_cpu(torch.randn(2, 3))


def test_a_failing_compiler_falls_back_to_the_plain_function(monkeypatch):
    from torch._inductor.exc import InductorError

    from decoderlm.model import compiled_kernels

    def broken_compile(fn):
        def run(*args):
            raise InductorError(RuntimeError("no working C++ toolchain"), None)
        return run

    monkeypatch.setattr(compiled_kernels.torch, "compile", broken_compile)
    monkeypatch.setattr(compiled_kernels, "can_compile", lambda device: True)
    monkeypatch.setattr(compiled_kernels, "MIN_ELEMENTS", 0)
    kernel = compiled_kernels.CompiledKernel(lambda x: x * 2)
    x = torch.ones(3)
    with pytest.warns(UserWarning, match="uncompiled"):
        assert torch.equal(kernel(x), x * 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # stays on the plain path, without warning again
        assert torch.equal(kernel(x), x * 2)
