"""Causality and KV-cache equivalence for every position / attention / feed-forward / norm variant."""

import itertools

import pytest
import torch

from decoderlm import DecoderLM, ModelConfig
from decoderlm.generate.inputs import causal_mask, padded_positions

POSITIONS = ["rope", "learned", "sinusoidal"]
ATTENTION = {"mha": 4, "gqa": 2, "mqa": 1}
FFN = [
    dict(ffn="mlp", activation="gelu_tanh"),
    dict(ffn="mlp", activation="relu", mlp_bias=False),
    dict(ffn="swiglu"),
    dict(ffn="moe", n_experts=4, experts_per_token=2),
    dict(ffn="moe", n_experts=4, experts_per_token=1, shared_expert=True),
]
NORMS = [dict(norm="layernorm", pre_norm=True), dict(norm="rmsnorm", pre_norm=False)]

VARIANTS = [
    dict(position=p, n_kv_head=ATTENTION[a], **f, **n)
    for p, a, f, n in itertools.product(POSITIONS, ATTENTION, FFN, NORMS)
]


def variant_id(kw):
    return "-".join(f"{v}" for v in kw.values())


def tiny_model(**overrides):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=61, max_seq_len=24, d_model=32, n_layer=2, n_head=4, **overrides)
    return DecoderLM(cfg).eval()


@pytest.mark.parametrize("kw", VARIANTS, ids=variant_id)
def test_changing_a_token_never_changes_earlier_logits(kw):
    model = tiny_model(**kw)
    idx = torch.randint(0, 61, (2, 16), generator=torch.Generator().manual_seed(1))
    base = model(idx)
    for t in (0, 7, 15):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % 61
        out = model(changed)
        torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=1e-6)
        assert not torch.allclose(out[:, t], base[:, t]), "the changed position itself must change"


def padded_inputs(valid):
    """The model's inputs for a left-padded batch: (B, T) 1/0 padding mask -> mask and positions."""
    return dict(attention_mask=causal_mask(valid.shape[1], valid=valid), positions=padded_positions(valid))


def incremental_logits(model, idx, valid=None, prefill=5, step=1):
    """Prefill, then `step` tokens at a time through the KV cache; valid: (B, T) padding mask or None."""
    cache = model.new_cache(idx.shape[0])
    positions = None if valid is None else padded_positions(valid)
    chunks, start = [], 0
    bounds = [prefill] + list(range(prefill + step, idx.shape[1] + step, step))
    for end in bounds:
        end = min(end, idx.shape[1])
        T = end - start
        mask = None
        if valid is not None or (start > 0 and T > 1):
            mask = causal_mask(T, end, start, None if valid is None else valid[:, :end])
        pos = None if positions is None else positions[:, start:end]
        chunks.append(model(idx[:, start:end], cache=cache, positions=pos, attention_mask=mask))
        start = end
    return torch.cat(chunks, dim=1)


@pytest.mark.parametrize("kw", VARIANTS, ids=variant_id)
def test_kv_cache_equals_full_sequence(kw):
    model = tiny_model(**kw)
    idx = torch.randint(0, 61, (3, 14), generator=torch.Generator().manual_seed(2))
    full = model(idx)
    torch.testing.assert_close(incremental_logits(model, idx), full, rtol=0, atol=1e-5)
    # several tokens per step after the prefill (speculative / chunked decoding)
    torch.testing.assert_close(incremental_logits(model, idx, step=3), full, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kw", VARIANTS, ids=variant_id)
def test_kv_cache_with_left_padding(kw):
    """A left-padded batch gives each row the logits it has alone, full or incremental."""
    model = tiny_model(**kw)
    gen = torch.Generator().manual_seed(3)
    lengths = [14, 9, 4]
    idx = torch.zeros(3, 14, dtype=torch.long)
    mask = torch.zeros(3, 14, dtype=torch.long)
    for row, n in enumerate(lengths):
        idx[row, 14 - n:] = torch.randint(0, 61, (n,), generator=gen)
        mask[row, 14 - n:] = 1
    full = model(idx, **padded_inputs(mask))
    incremental = incremental_logits(model, idx, valid=mask)
    for row, n in enumerate(lengths):
        alone = model(idx[row:row + 1, 14 - n:])
        torch.testing.assert_close(full[row:row + 1, 14 - n:], alone, rtol=0, atol=1e-5)
        torch.testing.assert_close(incremental[row:row + 1, 14 - n:], alone, rtol=0, atol=1e-5)
    assert torch.isfinite(full).all(), "pad positions must not produce NaN"


def test_sequence_longer_than_context_is_a_clear_error():
    from decoderlm import DecoderLMError

    model = tiny_model(position="learned")
    with pytest.raises(DecoderLMError, match="exceed the model's context of 24"):
        model(torch.zeros(1, 25, dtype=torch.long))


def test_tied_embeddings_share_one_matrix():
    tied, untied = tiny_model(tie_embeddings=True), tiny_model(tie_embeddings=False)
    assert tied.lm_head.weight is tied.tok_emb.weight
    assert untied.lm_head.weight is not untied.tok_emb.weight
    assert untied.num_parameters() - tied.num_parameters() == 61 * 32


def test_attention_dropout_only_in_training():
    model = tiny_model(attn_dropout=0.5, dropout=0.2)
    idx = torch.randint(0, 61, (1, 10))
    torch.testing.assert_close(model(idx), model(idx))  # eval: deterministic
    model.train()
    assert not torch.allclose(model(idx), model(idx))


@pytest.mark.parametrize("kw", [VARIANTS[0], VARIANTS[17], VARIANTS[-1]], ids=variant_id)
def test_static_cache_equals_full_sequence(kw):
    """The static cache (fixed shapes for torch.compile) gives the same logits, with and without padding."""
    model = tiny_model(**kw)
    idx = torch.randint(0, 61, (2, 12), generator=torch.Generator().manual_seed(4))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :5] = 0
    for attention_mask in (None, mask):
        full = model(idx) if attention_mask is None else model(idx, **padded_inputs(attention_mask))
        cache = model.new_cache(2, max_len=16, static=True)
        padded = None if attention_mask is None else torch.cat([attention_mask, torch.ones(2, 4, dtype=torch.long)], 1)
        chunks = []
        positions = None if attention_mask is None else padded_positions(attention_mask)
        for start, end in [(0, 6)] + [(t, t + 1) for t in range(6, 12)]:
            pos = None if positions is None else positions[:, start:end]
            static_mask = causal_mask(end - start, 16, cache.length, padded)
            chunks.append(model(idx[:, start:end], attention_mask=static_mask, positions=pos, cache=cache))
        incremental = torch.cat(chunks, 1)
        rows = [0, 1] if attention_mask is None else [0]
        torch.testing.assert_close(incremental[rows], full[rows], rtol=0, atol=1e-5)
        if attention_mask is not None:
            torch.testing.assert_close(incremental[1, 5:], full[1, 5:], rtol=0, atol=1e-5)
