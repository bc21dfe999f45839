"""The quality-per-budget suite: its bits-per-byte evaluation against a token-by-token computation,
nanoGPT's recipe as the issue states it, and a tiny end-to-end run."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from decoderlm import DecoderLM, ModelConfig
from decoderlm.bench import quality


def _tiny_model():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=11, max_seq_len=8, d_model=16, n_layer=1, n_head=2, position="learned")
    return DecoderLM(cfg)


def _direct_nats(model, ids, block):
    """Each token j >= 1 scored alone, from the tokens of its window before it (windows start at
    multiples of `block` among the predicting positions)."""
    ids = torch.as_tensor(ids.astype(np.int64))
    total = 0.0
    with torch.no_grad():
        for j in range(1, len(ids)):
            start = (j - 1) // block * block
            logits = model(ids[start:j].unsqueeze(0))[0, -1]
            total -= F.log_softmax(logits.double(), -1)[ids[j]].item()
    return total


@pytest.mark.parametrize("n_tokens,batch_size", [(30, 2), (33, 4), (9, 1)])  # tail window / exact fit / one window
def test_bits_per_byte_matches_token_by_token(n_tokens, batch_size):
    model = _tiny_model()
    model.train()
    ids = np.random.default_rng(n_tokens).integers(0, 11, n_tokens).astype(np.uint16)
    n_bytes = 47
    nats, bpb = quality.bits_per_byte(model, ids, n_bytes, block_size=8, batch_size=batch_size)
    assert model.training  # the caller's mode is restored
    model.eval()
    expected = _direct_nats(model, ids, 8)
    assert nats == pytest.approx(expected / (n_tokens - 1), rel=1e-5)
    assert bpb == pytest.approx(expected / n_bytes / math.log(2), rel=1e-5)


def test_bits_per_byte_rejects_empty_input():
    with pytest.raises(ValueError):
        quality.bits_per_byte(_tiny_model(), np.array([3]), 10, block_size=8)


def test_nanogpt_recipe_is_the_laptop_recipe():
    quick = quality.quickstart_recipe()
    r = quality.nanogpt_recipe(quick)
    m, t = r.model, r.train
    assert (m.n_layer, m.d_model, m.n_head, m.max_seq_len, m.dropout) == (4, 128, 4, 64, 0.0)
    assert (m.position, m.norm, m.ffn, m.tie_embeddings, m.d_ff) == ("learned", "layernorm", "mlp", True, 512)
    assert (t.batch_size, t.lr, t.min_lr, tuple(t.betas)) == (12, 1e-3, 1e-4, (0.9, 0.99))
    assert (t.warmup_steps, t.grad_clip, t.weight_decay, t.schedule) == (100, 1.0, 0.1, "cosine")
    assert r.data.tokenizer == "char" and r.data.val_fraction == quick.data.val_fraction
    assert (t.seed, t.dtype, t.compile) == (quick.train.seed, quick.train.dtype, quick.train.compile)


@pytest.mark.slow  # 25-40 s (scoring a whole held-out play in fp32); `pytest -m slow` runs it
def test_run_end_to_end_on_a_tiny_budget(tmp_path, monkeypatch):
    """Both contenders train for about a second on 10 plays (1 held out) and are scored on it.
    torch.compile is switched off here only because compiling costs more than the test may."""
    uncompiled = quality.quickstart_recipe()
    uncompiled = uncompiled.replace(train=uncompiled.train.replace(compile=False))
    monkeypatch.setattr(quality, "quickstart_recipe", lambda: uncompiled)
    rows = quality.run(budget_seconds=1, work_dir=tmp_path, max_docs=10)
    assert [r["tokenizer"].split()[0] for r in rows] == ["bpe", "char"]
    assert rows[0]["val bytes"] == rows[1]["val bytes"] > 0  # the same held-out play
    for row in rows:
        assert row["steps"] >= 1 and row["stopped"] == "time_budget"
        vocab = int(row["tokenizer"].split()[1])
        # barely trained: about the loss of a uniform guess, and bits/byte follows from nats/token
        assert 0 < row["val loss (nats/token)"] < math.log(vocab) + 1
        expected_bpb = row["val loss (nats/token)"] * row["val tokens"] / row["val bytes"] / math.log(2)
        assert row["val bits/byte"] == pytest.approx(expected_bpb, rel=1e-9)
        assert set(quality.COLUMNS) <= set(row)
