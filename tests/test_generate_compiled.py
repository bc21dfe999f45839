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
    """Padded batches decode through torch.compile in process (unpadded ones through a step built
    ahead of time: test_generate_packaged.py)."""
    model = tiny()
    prompt = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(prompt)
    mask[1, :3] = 0
    eager = generate(model, prompt, 20, temperature=0, compile=False, attention_mask=mask)
    fast = generate(model, prompt, 20, temperature=0, compile=True, attention_mask=mask)
    assert len(set(eager[0, 7:].tolist())) > 3, "a meaningful comparison needs varied tokens"
    assert torch.equal(eager, fast)
    with pytest.warns(Warning):  # past the 32-token window: the cache is cropped and refilled
        eager = generate(model, prompt, 40, temperature=0, compile=False, attention_mask=mask)
    with pytest.warns(Warning):
        fast = generate(model, prompt, 40, temperature=0, compile=True, attention_mask=mask)
    assert torch.equal(eager, fast)


def padded_prompt(seed: int, length: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows, the second left-padded: such batches decode through torch.compile in process
    (unpadded ones through a step built ahead of time, test_generate_packaged.py)."""
    prompt = torch.randint(0, 97, (2, length), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(prompt)
    mask[1, :2] = 0
    return prompt, mask


def test_changed_weights_are_not_served_from_a_stale_graph():
    model = tiny()
    prompt, mask = padded_prompt(2)
    generate(model, prompt, 8, temperature=0, compile=True, attention_mask=mask)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # in place, like an optimizer step
    assert torch.equal(generate(model, prompt, 8, temperature=0, compile=True, attention_mask=mask),
                       generate(model, prompt, 8, temperature=0, compile=False, attention_mask=mask))


def test_interleaved_generations_with_two_cache_lengths_each_run_their_own_graph():
    """After its first step a generation skips dynamo's guards (same shapes); a second generation
    with a longer static cache still gets its own graph, and both stay exact."""
    model = tiny(max_seq_len=300)
    prompt, mask = padded_prompt(3)
    kwargs = dict(temperature=0, attention_mask=mask)
    short = generate(model, prompt, 6, compile=True, stream=True, **kwargs)  # a 256-slot cache
    long = generate(model, prompt, 280, compile=True, stream=True, **kwargs)  # the 300-token window
    got_short, got_long = [next(short)], [next(long)]
    got_short += list(short)
    got_long += list(long)
    assert torch.equal(torch.stack(got_short, 1), generate(model, prompt, 6, compile=False, **kwargs)[:, 5:])
    assert torch.equal(torch.stack(got_long, 1), generate(model, prompt, 280, compile=False, **kwargs)[:, 5:])
