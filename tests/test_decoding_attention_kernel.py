"""decoderlm's C++ attention for one new token (kernels/decoding_attention.cpp): the attention torch
computes, reading only the slots the mask shows, taken only where it is built for."""

import pytest
import torch
import torch.nn.functional as F

from decoderlm.kernels import native
from decoderlm.kernels.decoding_attention import single_query_attention

needs_kernels = pytest.mark.skipif(not native.ensure() or native.loaded_build() != "avx512_bf16",
                                   reason="needs a CPU with AVX-512 BF16 and a C++ compiler")


def reference(q, k, v, mask):
    groups = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q.float(), k.float().repeat_interleave(groups, 1),
                                          v.float().repeat_interleave(groups, 1), attn_mask=mask)


@needs_kernels
@pytest.mark.parametrize("heads, kv_heads, head_size", [(8, 4, 64), (12, 12, 64), (8, 1, 128)])
def test_same_attention_as_torch_over_the_visible_slots(heads, kv_heads, head_size, monkeypatch):
    calls = []
    op = torch.ops.decoderlm.decoding_attention
    monkeypatch.setattr(torch.ops.decoderlm, "decoding_attention", lambda *a: calls.append(1) or op(*a))
    gen = torch.Generator().manual_seed(heads)
    B, S = 2, 96
    q = torch.randn(B, heads, 1, head_size, generator=gen).to(torch.bfloat16)
    k, v = (torch.randn(B, kv_heads, S, head_size, generator=gen).to(torch.bfloat16) for _ in range(2))
    # a static cache filled to slot 40 for row 0; row 1 left-padded (slots 0-9 hidden) and filled to 70
    slots = torch.arange(S)
    mask = torch.stack([slots <= 40, (slots >= 10) & (slots <= 70)]).view(B, 1, 1, S)
    k[0, :, 41:] = v[0, :, 41:] = float("nan")  # never read: slots past the text are skipped
    ours = single_query_attention(q, k, v, mask).float()
    assert calls and not ours.isnan().any()
    assert (ours - reference(q, k.nan_to_num(), v.nan_to_num(), mask)).abs().max() < 2e-2
    assert torch.allclose(single_query_attention(q[:1], k[:1, :, :41], v[:1, :, :41], None).float(),
                          ours[:1], atol=1e-6)  # no mask: every slot of a (dynamic) cache is visible


@needs_kernels
def test_torchs_kernel_keeps_what_ours_is_not_built_for(monkeypatch):
    monkeypatch.setattr(torch.ops.decoderlm, "decoding_attention", lambda *a: pytest.fail("not ours"))
    q, k, v = torch.randn(1, 4, 1, 16, dtype=torch.bfloat16), *torch.randn(2, 1, 4, 8, 16, dtype=torch.bfloat16)
    single_query_attention(q, k, v, None)  # heads of 16 values: not a multiple of 32
    q, k, v = torch.randn(1, 4, 1, 32, dtype=torch.float16), *torch.randn(2, 1, 4, 8, 32, dtype=torch.float16)
    single_query_attention(q, k, v, None)  # float16
