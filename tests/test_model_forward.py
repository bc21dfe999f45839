"""The model's one forward: logits, or the loss when targets are given; a ready attention mask
with positions (packed sequences); and a model/ package of plain PyTorch."""

import ast
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import decoderlm
from decoderlm import DecoderLM, ModelConfig

MODEL_DIR = Path(decoderlm.__file__).parent / "model"


def tiny_model(**overrides):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=61, max_seq_len=24, d_model=32, n_layer=2, n_head=4, n_kv_head=2, **overrides)
    return DecoderLM(cfg)


@pytest.mark.parametrize("kw", [dict(position="rope", ffn="swiglu", norm="rmsnorm"),
                                dict(position="learned", tie_embeddings=True, lm_head_bias=True),
                                dict(ffn="moe", n_experts=4, experts_per_token=2, moe_aux_loss_coef=0.3)])
def test_loss_is_cross_entropy_on_the_logits_plus_the_moe_term(kw):
    model = tiny_model(**kw)
    idx = torch.randint(0, 61, (3, 12), generator=torch.Generator().manual_seed(1))
    targets = torch.randint(0, 61, (3, 12), generator=torch.Generator().manual_seed(2))
    targets[0, :5] = -100  # ignored
    loss = model(idx, targets)
    aux = model.aux_loss()
    logits = model(idx)
    expected = F.cross_entropy(logits.view(-1, 61), targets.view(-1), ignore_index=-100)
    if kw.get("ffn") == "moe":
        assert torch.is_tensor(aux) and aux > 0
        expected = expected + 0.3 * sum(block.ffn.balance_loss for block in model.blocks)
    else:
        assert aux == 0.0
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_every_target_ignored_gives_zero_not_nan():
    model = tiny_model()
    idx = torch.randint(0, 61, (2, 8))
    assert model(idx, torch.full_like(idx, -100)).item() == 0.0


@pytest.mark.parametrize("position", ["rope", "learned", "sinusoidal"])
def test_a_packed_window_gives_each_sequence_its_own_logits(position):
    """Two sequences in one row: a block-diagonal causal mask and positions that restart at the
    second sequence give each the logits it has alone (packed fine-tuning relies on this)."""
    model = tiny_model(position=position, ffn="swiglu").eval()
    gen = torch.Generator().manual_seed(3)
    first, second = torch.randint(0, 61, (1, 9), generator=gen), torch.randint(0, 61, (1, 6), generator=gen)
    packed = torch.cat([first, second], dim=1)  # (1, 15)
    doc = torch.tensor([0] * 9 + [1] * 6)
    causal = torch.ones(15, 15, dtype=torch.bool).tril()
    mask = (causal & (doc.view(-1, 1) == doc.view(1, -1))).view(1, 1, 15, 15)
    positions = torch.cat([torch.arange(9), torch.arange(6)]).view(1, 15)
    with torch.no_grad():
        logits = model(packed, positions=positions, attention_mask=mask)
        torch.testing.assert_close(logits[:, :9], model(first), rtol=0, atol=1e-5)
        torch.testing.assert_close(logits[:, 9:], model(second), rtol=0, atol=1e-5)


def test_tokens_after_cached_ones_need_a_mask_and_masks_are_boolean():
    model = tiny_model().eval()
    cache = model.new_cache(1)
    model(torch.zeros(1, 4, dtype=torch.long), cache=cache)
    model(torch.zeros(1, 1, dtype=torch.long), cache=cache)  # one token after its prefix: no mask needed
    with pytest.raises(ValueError, match="need an attention_mask"):
        model(torch.zeros(1, 3, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="must be boolean"):
        model(torch.zeros(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 4, dtype=torch.long))


def test_logits_to_keep_returns_the_last_positions_logits_only():
    """Decoding a prompt needs the last position's logits; the output layer then runs on it alone."""
    model = tiny_model().eval()
    ids = torch.randint(0, 61, (2, 7))
    with torch.no_grad():
        full = model(ids)
        assert full.shape == (2, 7, 61)
        torch.testing.assert_close(model(ids, logits_to_keep=1), full[:, -1:], rtol=0, atol=1e-6)
        torch.testing.assert_close(model(ids, logits_to_keep=3), full[:, -3:], rtol=0, atol=1e-6)
        torch.testing.assert_close(model(ids, logits_to_keep=0), full, rtol=0, atol=0)
    with pytest.raises(ValueError, match="logits_to_keep"):
        model(ids, targets=ids, logits_to_keep=1)
    with pytest.raises(ValueError, match="logits_to_keep"):
        model(ids, logits_to_keep=-1)


def test_a_prompt_written_through_a_growing_view_fills_a_static_cache_alike():
    """Decoding writes a prompt into an empty static cache through `growing_view` (causal over the
    prompt's own slots): the cache holds what the masked write over every slot would have put there."""
    from decoderlm.generate.inputs import causal_mask

    model = tiny_model().eval()
    ids, after = torch.randint(0, 61, (1, 9)), torch.randint(0, 61, (1, 1))
    masked, viewed = model.new_cache(1, 24, static=True), model.new_cache(1, 24, static=True)
    with torch.no_grad():
        expected = model(ids, cache=masked, attention_mask=causal_mask(9, 24, masked.length))[:, -1:]
        got = model(ids, cache=viewed.growing_view(), logits_to_keep=1)  # moves viewed's length too
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
        assert int(viewed.length) == 9 and torch.is_tensor(viewed.length)
        for layer in range(2):
            torch.testing.assert_close(viewed.k[layer][:, :, :9], masked.k[layer][:, :, :9], rtol=0, atol=1e-6)
            torch.testing.assert_close(viewed.v[layer][:, :, :9], masked.v[layer][:, :, :9], rtol=0, atol=1e-6)
        step = [model(after, cache=c, attention_mask=causal_mask(1, 24, c.length)) for c in (masked, viewed)]
        torch.testing.assert_close(step[1], step[0], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="empty cache"):
        viewed.growing_view()


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
    return names


def test_the_model_package_is_plain_pytorch():
    """No kernels, no torch.compile, no device or compile-state checks inside model/."""
    files = sorted(MODEL_DIR.glob("*.py"))
    assert len(files) >= 6
    for path in files:
        imports = _imports(path)
        assert not any(name.startswith(("decoderlm.kernels", "decoderlm.compile_support", "decoderlm.train"))
                       for name in imports), path.name
        text = path.read_text()
        for banned in ("torch.compile", "torch.compiler", "is_compiling", "device.type", "torch.cuda", "_dynamo",
                       "_inductor"):
            assert banned not in text, f"{path.name} mentions {banned}"
