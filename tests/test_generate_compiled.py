"""The compiled decode step (static cache, frozen weights) produces what eager decoding produces."""

import pytest
import torch

from decoderlm import DecoderLM, ModelConfig
from decoderlm.compile_support import can_compile
from decoderlm.generate import generate

pytestmark = pytest.mark.skipif(not can_compile(torch.device("cpu")), reason="torch.compile needs a C++ compiler")


def tiny(position="rope", max_seq_len=32):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=97, max_seq_len=max_seq_len, d_model=64, n_layer=2, n_head=4, n_kv_head=2,
                      position=position, ffn="swiglu", norm="rmsnorm", init_std=0.2)
    return DecoderLM(cfg).eval()


def test_compiled_greedy_equals_eager_with_padding_and_overflow():
    model = tiny()
    prompt = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(prompt)
    mask[1, :3] = 0
    for kwargs in (dict(), dict(attention_mask=mask)):
        eager = generate(model, prompt, 20, temperature=0, compile=False, **kwargs)
        fast = generate(model, prompt, 20, temperature=0, compile=True, **kwargs)
        assert len(set(eager[0, 7:].tolist())) > 3, "a meaningful comparison needs varied tokens"
        assert torch.equal(eager, fast)
    with pytest.warns(Warning):  # past the 32-token window: the cache is cropped and refilled
        eager = generate(model, prompt, 40, temperature=0, compile=False)
    with pytest.warns(Warning):
        fast = generate(model, prompt, 40, temperature=0, compile=True)
    assert torch.equal(eager, fast)


def test_changed_weights_are_not_served_from_a_stale_graph():
    model = tiny()
    prompt = torch.randint(0, 97, (1, 5), generator=torch.Generator().manual_seed(2))
    generate(model, prompt, 8, temperature=0, compile=True)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # in place, like an optimizer step
    assert torch.equal(generate(model, prompt, 8, temperature=0, compile=True),
                       generate(model, prompt, 8, temperature=0, compile=False))


def test_interleaved_generations_with_two_cache_lengths_each_run_their_own_graph():
    """After its first step a generation skips dynamo's guards (same shapes); a second generation
    with a longer static cache still gets its own graph, and both stay exact."""
    model = tiny(max_seq_len=300)
    prompt = torch.randint(0, 97, (1, 5), generator=torch.Generator().manual_seed(3))
    short = generate(model, prompt, 6, temperature=0, compile=True, stream=True)  # a 256-slot cache
    long = generate(model, prompt, 280, temperature=0, compile=True, stream=True)  # the 300-token window
    got_short, got_long = [next(short)], [next(long)]
    got_short += list(short)
    got_long += list(long)
    assert torch.equal(torch.cat(got_short), generate(model, prompt, 6, temperature=0, compile=False)[0, 5:])
    assert torch.equal(torch.cat(got_long), generate(model, prompt, 280, temperature=0, compile=False)[0, 5:])
