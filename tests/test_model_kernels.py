"""The CPU training kernels (decoderlm.kernels) give the results of the reference layers they
replace: one parity test per override (outputs and gradients), then the chunked head +
cross-entropy and the compile fallbacks in detail."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from decoderlm.compile_support import can_compile
from decoderlm.config import ModelConfig
from decoderlm.kernels import apply_cpu_kernels, compiled
from decoderlm.kernels import linear_cross_entropy as lce
from decoderlm.kernels.decoding_attention import single_query_attention, use_single_query_layout
from decoderlm.kernels.layers import ChunkedHead, CompiledRMSNorm, CompiledSwiGLU, CPUAttention
from decoderlm.model import DecoderLM
from decoderlm.model.attention import Attention
from decoderlm.model.feedforward import SwiGLU
from decoderlm.model.transformer import Head

needs_compiler = pytest.mark.skipif(not can_compile(torch.device("cpu")), reason="needs a C++ compiler for inductor")
CONFIG = ModelConfig(vocab_size=64, d_model=32, n_layer=2, n_head=4, n_kv_head=2, max_seq_len=16,
                     position="rope", norm="rmsnorm", ffn="swiglu")
T = 15  # the model test's sequence length too, so that its kernels are already compiled


def assert_close(a: torch.Tensor, b: torch.Tensor, dtype) -> None:
    """fp32: equal to rounding. bf16, where a fused kernel rounds once and eager after every op:
    the largest difference within 2% of the largest value."""
    if dtype == torch.float32:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    else:
        assert a.dtype == b.dtype
        assert (a.float() - b.float()).abs().max() <= 0.02 * b.float().abs().max()


@pytest.fixture
def compile_tiny_shapes(monkeypatch):
    monkeypatch.setattr(compiled, "MIN_ELEMENTS", 0)  # tiny test shapes are compiled too


def _leaf(*shape, dtype=torch.float32, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen) * scale).to(dtype).requires_grad_()


def assert_parity(reference: nn.Module, kernel_class: type, run, dtype, inputs):
    """apply_cpu_kernels turns `reference` (a copy) into `kernel_class`; run(module, *inputs) -> a
    tensor. Same state_dict, and the same output and gradients (inputs and parameters)."""
    reference = reference.to(dtype)
    fast = apply_cpu_kernels(copy.deepcopy(reference))
    assert type(fast) is kernel_class and type(reference) is not kernel_class
    assert fast.state_dict().keys() == reference.state_dict().keys()
    results = []
    for module in (reference, fast):
        xs = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
        out = run(module, *xs)
        wrt = [x for x in xs if x.requires_grad] + list(module.parameters())
        grads = torch.autograd.grad(out, wrt, torch.ones_like(out) if out.dim() else None)
        results.append((out, grads))
    (out_ref, grads_ref), (out_fast, grads_fast) = results
    assert_close(out_fast, out_ref, dtype)
    for a, b in zip(grads_fast, grads_ref):
        assert_close(a, b, dtype)


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_rmsnorm_matches_nn_rmsnorm(compile_tiny_shapes, dtype):
    norm = nn.RMSNorm(32, eps=1e-5)
    nn.init.normal_(norm.weight, 1.0, 0.2)
    assert_parity(norm, CompiledRMSNorm, lambda m, x: m(x), dtype, [_leaf(2, T, 32, dtype=dtype)])


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_swiglu_matches_swiglu(compile_tiny_shapes, dtype):
    torch.manual_seed(0)
    assert_parity(SwiGLU(CONFIG), CompiledSwiGLU, lambda m, x: m(x), dtype, [_leaf(2, T, 32, dtype=dtype)])


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_attention_matches_attention(compile_tiny_shapes, dtype):
    """Compiled RoPE in both dtypes; in bf16 also the flash forward + hand-written backward."""
    torch.manual_seed(0)
    rotary = DecoderLM(CONFIG).rotary
    rope = rotary(torch.arange(T).unsqueeze(0))
    assert_parity(Attention(CONFIG), CPUAttention, lambda m, x: m(x, rope), dtype, [_leaf(2, T, 32, dtype=dtype)])


@pytest.mark.parametrize("heads", [(4, 2), (8, 1), (4, 4)])  # grouped, multi-query, multi-head
@pytest.mark.parametrize("mask_rows", [None, 1, 2])  # no mask, one mask for the batch, one per row
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_single_query_attention_is_sdpa_over_the_cache(heads, mask_rows, dtype):
    """A decoding step's one query laid out as several rows gives SDPA's answer, with GQA's sharing."""
    n_head, n_kv_head = heads
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, n_head, 1, 16, generator=gen).to(dtype)
    k, v = (torch.randn(2, n_kv_head, 40, 16, generator=gen).to(dtype) for _ in range(2))
    mask = None
    if mask_rows:
        mask = torch.rand(mask_rows, 1, 1, 40, generator=gen) < 0.6
        mask[..., 0] = True  # every row sees a key
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask,
                                              enable_gqa=n_head != n_kv_head)
    got = single_query_attention(q, k, v, mask)
    assert got.shape == q.shape and got.dtype == dtype
    assert_close(got.float(), expected, dtype)


def test_the_single_query_layout_is_for_reduced_precision_decoding_only():
    one = torch.zeros(1, 4, 1, 8, dtype=torch.bfloat16)
    assert use_single_query_layout(one, training=False)
    assert not use_single_query_layout(one, training=True)
    assert not use_single_query_layout(one.float(), training=False)  # float32: SDPA is fast for one row
    assert not use_single_query_layout(torch.zeros(1, 4, 2, 8, dtype=torch.bfloat16), training=False)


def test_generation_decodes_through_the_kernels_with_the_same_tokens():
    """generate() swaps the kernel layers into a CPU model (in place, same weights) before decoding."""
    from decoderlm.generate import generate

    torch.manual_seed(0)
    model = DecoderLM(CONFIG.replace(init_std=0.3)).to(torch.bfloat16)
    plain = copy.deepcopy(model)
    prompt = torch.randint(0, 64, (1, 4), generator=torch.Generator().manual_seed(1))
    ids = generate(model, prompt, 10, temperature=0, compile=False)
    assert any(type(m) is CPUAttention for m in model.modules())
    with torch.inference_mode():  # the reference: plain layers, one forward over the whole text
        logits = plain(ids[:, :-1]).float()[0, 3:]
    chosen = logits.gather(1, ids[0, 4:, None]).squeeze(1)
    assert (logits.max(1).values - chosen).max() < 0.05  # each token was the top choice, up to bf16 ties


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_head_matches_head(compile_tiny_shapes, monkeypatch, dtype):
    monkeypatch.setattr(lce, "CHUNK_BYTES", 4 * 64 * 8)  # 8 rows per chunk: several chunks
    torch.manual_seed(0)
    head = Head(32, 64, bias=True)
    targets = torch.randint(0, 64, (2, T))
    targets[0, :3] = -100
    assert_parity(head, ChunkedHead, lambda m, x, y: m.loss(x, y) * 2.5, dtype,
                  [_leaf(2, T, 32, dtype=dtype), targets])


@needs_compiler
def test_a_model_with_kernels_keeps_its_weights_and_results(compile_tiny_shapes):
    """fp32, so the comparison is tight: every kernel on against the reference model."""
    torch.manual_seed(0)
    reference = DecoderLM(CONFIG)
    fast = apply_cpu_kernels(copy.deepcopy(reference))
    assert fast.state_dict().keys() == reference.state_dict().keys()
    assert {type(m) for m in fast.modules()} >= {CompiledRMSNorm, CompiledSwiGLU, CPUAttention, ChunkedHead}
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    losses, grads = [], []
    for model in (reference, fast):
        loss = model(idx[:, :-1], idx[:, 1:])
        losses.append(loss.detach())
        grads.append(torch.autograd.grad(loss, list(model.parameters())))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    with torch.no_grad():  # inference: the plain ops, the same logits
        torch.testing.assert_close(fast(idx), reference(idx), rtol=1e-5, atol=1e-5)


# -- the chunked head + cross-entropy in detail ---------------------------------------------------
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
    assert len(lce.row_chunks(512, 64)) == lce.MAX_CHUNKS
    error = lambda g: ((g.float() - exact).abs().max() / exact.abs().max()).item()  # noqa: E731
    assert error(chunked) <= 1.5 * error(plain)


def test_evaluation_needs_no_gradients_and_ignored_rows_count_for_nothing(monkeypatch):
    def no_gradients_in_evaluation(*args):
        raise AssertionError("the gradient kernel ran under no_grad")

    monkeypatch.setattr(lce, "chunk_kernel", no_gradients_in_evaluation)
    hidden, weight, b, targets = _head_inputs()
    with torch.no_grad():
        loss = lce.linear_cross_entropy(hidden, weight, b, targets)
        plain = F.cross_entropy(F.linear(hidden, weight, b), targets)
        assert torch.allclose(loss, plain, atol=1e-6)
        assert lce.linear_cross_entropy(hidden, weight, b, torch.full_like(targets, -100)).item() == 0.0


def test_under_autocast_the_head_runs_in_bf16_and_gradients_keep_the_weights_dtype(monkeypatch):
    seen = []
    kernel = lce.chunk_kernel

    def recording_kernel(logits, *args):
        seen.append(logits.dtype)
        return kernel(logits, *args)

    monkeypatch.setattr(lce, "chunk_kernel", recording_kernel)
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


# -- when the kernels step aside ------------------------------------------------------------------
def test_kernels_stay_out_of_inference():
    """No gradients: the plain ops (decoding shapes change every step, so nothing is compiled)."""
    x = torch.randn(2, 3, requires_grad=True)
    assert compiled.training_on_cpu(x)
    with torch.no_grad():
        assert not compiled.training_on_cpu(x)
    assert not compiled.training_on_cpu(torch.randn(2, 3))


def test_inside_a_compiled_model_the_plain_function_is_traced(monkeypatch):
    monkeypatch.setattr(compiled, "MIN_ELEMENTS", 0)
    monkeypatch.setattr(compiled, "can_compile", lambda device: True)
    kernel = compiled.CompiledKernel(lambda x: x * 2)
    outer = torch.compile(lambda x: kernel(x) + 1, backend="eager")  # a whole-model compile, traced only

    def no_nested_compile(fn, **kwargs):
        raise AssertionError("a kernel compiled itself inside a compiled model")

    monkeypatch.setattr(compiled.torch, "compile", no_nested_compile)
    x = torch.ones(3)
    assert torch.equal(outer(x), x * 2 + 1)


def test_a_failing_compiler_falls_back_to_the_plain_function(monkeypatch):
    from torch._inductor.exc import InductorError

    def broken_compile(fn):
        def run(*args):
            raise InductorError(RuntimeError("no working C++ toolchain"), None)
        return run

    monkeypatch.setattr(compiled.torch, "compile", broken_compile)
    monkeypatch.setattr(compiled, "can_compile", lambda device: True)
    monkeypatch.setattr(compiled, "MIN_ELEMENTS", 0)
    kernel = compiled.CompiledKernel(lambda x: x * 2)
    x = torch.ones(3)
    with pytest.warns(UserWarning, match="uncompiled"):
        assert torch.equal(kernel(x), x * 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # stays on the plain path, without warning again
        assert torch.equal(kernel(x), x * 2)
