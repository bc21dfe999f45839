"""decoderlm's int8/int4 matrix-vector kernels (kernels/quantized_matvec.cpp, or
quantized_matvec_avx2.cpp on a CPU without AVX-512 BF16): the same products as torch's kernels on
the same saved weights, taken only for the calls they are built for, built once and atomically,
and a failed build leaves torch's kernels in charge."""

import warnings

import pytest
import torch

from decoderlm.compile_support import can_compile
from decoderlm.kernels import native
from decoderlm.quantize.linear import Int4Linear, Int8Linear

needs_kernels = pytest.mark.skipif(not native.ensure(),
                                   reason="needs a CPU with AVX2 or AVX-512 BF16 and a C++ compiler")


def layers(in_features: int, out_features: int, bias: bool, group_size: int = 64):
    torch.manual_seed(in_features + out_features)
    linear = torch.nn.Linear(in_features, out_features, bias=bias)
    return (Int8Linear.from_linear(linear).to(torch.bfloat16),
            Int4Linear.from_linear(linear, group_size).to(torch.bfloat16))


def torch_kernel(layer, x: torch.Tensor) -> torch.Tensor:
    """The layer's product through torch's own kernel (what runs where ours does not)."""
    if isinstance(layer, Int8Linear):
        y = torch.ops.aten._weight_int8pack_mm(x, layer.qweight, layer.scales)
    else:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x, layer.packed, layer.group_size,
                                                       layer.scales_and_zeros)[:, :layer.out_features]
    return y if layer.bias is None else y + layer.bias


@needs_kernels
@pytest.mark.parametrize("rows", [1, 3, native.MAX_ROWS])
@pytest.mark.parametrize("shape", [(512, 1536, False), (768, 1030, True), (1408, 512, False)])
def test_same_products_as_torchs_kernels(shape, rows, monkeypatch):
    """Widths of the 6x512 and GPT-2 models; 1030 rows leave a block of 4 incomplete."""
    calls = []
    for name in ("int8_matvec", "int4_matvec"):
        op = getattr(torch.ops.decoderlm, name)
        monkeypatch.setattr(torch.ops.decoderlm, name, lambda *a, op=op: calls.append(op) or op(*a))
    x = torch.randn(rows, shape[0], dtype=torch.bfloat16, generator=torch.Generator().manual_seed(rows))
    for layer in layers(*shape):
        ours, reference = layer(x).float(), torch_kernel(layer, x).float()
        exact = x.float() @ layer.dequantized().T + (0 if layer.bias is None else layer.bias.float())
        # bf16 outputs (rounded again when a bias is added): a rounding step of the largest apart
        assert (ours - reference).abs().max() <= 2 ** -7 * reference.abs().max()
        assert (ours - exact).abs().max() <= 2 ** -7 * exact.abs().max()
    assert len(calls) == 2  # ours ran, once per layer


@needs_kernels
def test_fewer_rows_than_a_block_and_bad_shapes_are_refused():
    """3 output rows (all in the kernel's last, short block); a wrong group size or scales of the wrong
    shape raise instead of reading out of bounds or dividing by zero."""
    x = torch.randn(2, 512, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(3))
    for layer in layers(512, 3, bias=False):
        ours, reference = layer(x).float(), torch_kernel(layer, x).float()
        assert (ours - reference).abs().max() <= 2 ** -7 * reference.abs().max()
    int8, int4 = layers(512, 8, bias=False)
    with pytest.raises(RuntimeError, match="group size"):
        torch.ops.decoderlm.int4_matvec(x, int4.qweight, int4.scales, int4.zeros, 0)
    with pytest.raises(RuntimeError, match="scales and zeros"):
        torch.ops.decoderlm.int4_matvec(x, int4.qweight, int4.scales[:4], int4.zeros[:4], 64)
    with pytest.raises(RuntimeError, match="one scale per output row"):
        torch.ops.decoderlm.int8_matvec(x, int8.qweight, int8.scales[:4])


@needs_kernels
@pytest.mark.parametrize("group_size", [128, 256])
def test_int4_products_with_larger_groups(group_size):
    """Groups of 128 and 256 (one group spans several of the kernel's 64-column steps), and more
    than 16 groups in a row (the kernel converts the groups' scales 16 at a time)."""
    _, layer = layers(4608, 40, bias=False, group_size=group_size)  # 36 and 18 groups
    x = torch.randn(3, 4608, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(group_size))
    ours, reference = layer(x).float(), torch_kernel(layer, x).float()
    exact = x.float() @ layer.dequantized().T
    assert (ours - reference).abs().max() <= 2 ** -7 * reference.abs().max()
    assert (ours - exact).abs().max() <= 2 ** -7 * exact.abs().max()


@needs_kernels
def test_torchs_kernels_keep_what_ours_are_not_built_for(monkeypatch):
    """More rows than MAX_ROWS (a prefill), float32 activations, and int4 groups of 32."""
    monkeypatch.setattr(torch.ops.decoderlm, "int8_matvec", lambda *a: pytest.fail("not ours"))
    monkeypatch.setattr(torch.ops.decoderlm, "int4_matvec", lambda *a: pytest.fail("not ours"))
    int8, int4 = layers(512, 256, bias=False)
    prefill = torch.randn(native.MAX_ROWS + 1, 512, dtype=torch.bfloat16)
    for layer in (int8, int4):
        assert torch.equal(layer(prefill), torch_kernel(layer, prefill))
    int8_fp32 = Int8Linear.from_linear(torch.nn.Linear(512, 256))
    int8_fp32(torch.randn(1, 512))
    _, groups_of_32 = layers(512, 256, bias=False, group_size=32)
    one = torch.randn(1, 512, dtype=torch.bfloat16)
    assert torch.equal(groups_of_32(one), torch_kernel(groups_of_32, one))


def test_a_failed_build_warns_once_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CXX", "false")  # a compiler that always fails
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(native, "_kind", lambda: "avx2")
    with pytest.warns(UserWarning, match="could not be built"):
        assert not native.ensure()
    assert not native.ensure()  # decided once per process
    folder = tmp_path / "decoderlm" / "kernels"
    assert list(folder.iterdir()) == []  # no partial library


@needs_kernels
def test_built_once_under_a_name_that_follows_the_source_and_flags(monkeypatch):
    path = native._library_path()  # built by the ensure() above, where the cache is
    assert path.is_file() and path.parent.name == "kernels" and path.parent.parent.name == "decoderlm"
    assert not list(path.parent.glob(".build-*"))
    monkeypatch.setattr(native, "FLAGS", native.FLAGS + ("-DOTHER",))
    assert native._library_path() != path


def test_eager_decoding_loads_a_built_library_but_never_builds_one(tmp_path, monkeypatch):
    """A plain generate must not wait ten seconds for a compiler; the compiled paths build (ensure())."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(native, "_kind", lambda: "avx2")
    built = []
    monkeypatch.setattr(native, "_build", lambda path: built.append(path) or (_ for _ in ()).throw(OSError("no")))
    one_row = torch.randn(1, 64, dtype=torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing tried, nothing warned
        assert not native.matvec_usable(one_row) and not native.matvec_usable(one_row)
    assert built == []
    with pytest.warns(UserWarning, match="could not be built"):
        assert not native.ensure()  # a compiled path: builds (here: fails, torch's kernels stay)
    assert len(built) == 1


AVX2_CHECK = r"""
import torch
from decoderlm.kernels import native
from decoderlm.quantize.linear import Int4Linear, Int8Linear

assert native.ensure() and native.loaded_build() == "avx2", native.loaded_build()
q = torch.randn(1, 64, 4, 32, dtype=torch.bfloat16)
assert not native.attention_usable(q, q, q, None)  # the AVX2 build has no attention kernel
gen = torch.Generator().manual_seed(0)
for in_f, out_f, rows, group in [(512, 1030, 1, 64), (1408, 512, 8, 64), (4608, 40, 3, 128), (512, 3, 2, 256)]:
    linear = torch.nn.Linear(in_f, out_f, bias=False)
    x = torch.randn(rows, in_f, generator=gen).to(torch.bfloat16)
    x[:, 5] = 30.0  # an outlier column sets the row's fixed-point scale: the other values keep less
    for layer in (Int8Linear.from_linear(linear).to(torch.bfloat16),
                  Int4Linear.from_linear(linear, group).to(torch.bfloat16)):
        exact = x.float() @ layer.dequantized().T
        ours = layer(x).float()
        assert (ours - exact).abs().max() <= 2 ** -7 * exact.abs().max(), (in_f, out_f, type(layer))
# the int32 sums' worst case: every weight 127 times every activation at the row's largest value,
# over 4,608 columns (more than one int32 sum could hold without moving to float on the way)
layer = Int8Linear(4608, 16, dtype=torch.bfloat16)
layer.qweight.fill_(127)
x = torch.full((1, 4608), 0.5, dtype=torch.bfloat16)
expected = 0.5 * 4608 * layer.dequantized()[0, 0].item()
assert abs(layer(x)[0, 0].item() - expected) <= 2 ** -7 * expected
print("ok")
"""


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512")
                    or not can_compile(torch.device("cpu")), reason="needs AVX2 and a C++ compiler")
def test_the_avx2_build_computes_the_products():
    """The AVX2 build (taken on this CPU if it lacks AVX-512 BF16; asked for by DECODERLM_KERNELS
    otherwise), in a process of its own: one process loads one build."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "DECODERLM_KERNELS": "avx2"}
    done = subprocess.run([sys.executable, "-c", AVX2_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_kernels_none_keeps_torchs(monkeypatch):
    monkeypatch.setenv("DECODERLM_KERNELS", "none")
    monkeypatch.setattr(native, "_loaded", {})
    assert native._kind() is None and not native.ensure()
