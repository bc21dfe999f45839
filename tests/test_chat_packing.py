"""Packing: best-fit rows, the block-diagonal causal mask and restarting positions (by hand), targets
that never cross examples, packed logits and losses equal to each example alone, fitting examples to
the context, step-addressed batches, and the share of real tokens packed vs padded."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from decoderlm import DecoderLM, ModelConfig
from decoderlm.chat import (
    IGNORE_INDEX, ChatBatches, Example, best_fit, block_causal_layout, fit_to_window, layout_efficiency, pack,
    packed_batch, padded_batch, split_examples,
)
from decoderlm.errors import DecoderLMError

VOCAB = 50


def _example(n, taught_from=0, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.zeros(n, dtype=bool)
    mask[taught_from:] = True
    return Example(rng.integers(0, VOCAB, n).astype(np.int32), mask)


def _examples(lengths):
    return [_example(n, taught_from=n // 2, seed=i) for i, n in enumerate(lengths)]


def test_best_fit_fills_rows_tightly_and_places_everything_once():
    assert sorted(map(sorted, best_fit([6, 4, 3, 3, 2, 2], 10))) == [[0, 1], [2, 3, 4, 5]]
    sizes = np.random.default_rng(0).integers(1, 33, 300).tolist()
    rows = best_fit(sizes, 32)
    assert sorted(i for row in rows for i in row) == list(range(300))
    assert all(sum(sizes[i] for i in row) <= 32 for row in rows)
    assert len(rows) <= math.ceil(sum(sizes) / 32) * 1.1  # within 10% of the lower bound
    with pytest.raises(DecoderLMError, match="does not fit a window of 4"):
        best_fit([5], 4)


def test_block_causal_mask_and_positions_by_hand():
    mask, positions = block_causal_layout([[2, 3], [4]], 6)
    assert mask.shape == (2, 1, 6, 6) and mask.dtype == torch.bool
    expected_row0 = torch.tensor([
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],  # the unused tail sees only itself
    ], dtype=torch.bool)
    assert torch.equal(mask[0, 0], expected_row0)
    assert torch.equal(mask[1, 0, :4, :4], torch.ones(4, 4, dtype=torch.bool).tril())
    assert not mask[1, 0, 4:, :4].any() and mask[1, 0].any(-1).all()
    assert positions.tolist() == [[0, 1, 0, 1, 2, 0], [0, 1, 2, 3, 0, 1]]


def test_packed_targets_stay_inside_their_example():
    examples = [Example(np.array([1, 2, 3], np.int32), np.array([0, 0, 1], bool)),
                Example(np.array([4, 5, 6, 7], np.int32), np.array([0, 1, 1, 1], bool))]
    batch = packed_batch(examples, [[0, 1]], 7)
    assert batch.idx.tolist() == [[1, 2, 4, 5, 6, 0, 0]]
    assert batch.targets.tolist() == [[IGNORE_INDEX, 3, 5, 6, 7, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch.positions.tolist() == [[0, 1, 0, 1, 2, 0, 1]] and batch.loss_tokens == 4
    padded = padded_batch(examples, [0, 1])
    assert padded.idx.tolist() == [[1, 2, 0], [4, 5, 6]] and padded.positions is None and padded.attention_mask is None
    assert padded.targets.tolist() == [[IGNORE_INDEX, 3, IGNORE_INDEX], [5, 6, 7]]


class _ReferenceLM(torch.nn.Module):
    """One rotary attention layer and an MLP, written out in the test: any mask or positions bug in
    the layout shows up as different logits."""

    def __init__(self, dim=16, heads=2):
        super().__init__()
        self.heads, self.dim = heads, dim
        self.emb = torch.nn.Embedding(VOCAB, dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(), torch.nn.Linear(4 * dim, dim))
        self.head = torch.nn.Linear(dim, VOCAB)

    def forward(self, idx, positions=None, attention_mask=None):
        B, T = idx.shape
        positions = torch.arange(T).expand(B, T) if positions is None else positions
        x = self.emb(idx)
        q, k, v = (t.view(B, T, self.heads, -1).transpose(1, 2) for t in self.qkv(x).split(self.dim, -1))
        d = q.shape[-1]
        angles = positions[:, None, :, None] / 100.0 ** (torch.arange(d // 2) / (d // 2))  # (B, 1, T, d/2)
        angles = torch.cat([angles, angles], -1)

        def rotate(t):
            return t * angles.cos() + torch.cat([-t[..., d // 2:], t[..., :d // 2]], -1) * angles.sin()

        y = F.scaled_dot_product_attention(rotate(q), rotate(k), v, attn_mask=attention_mask,
                                           is_causal=attention_mask is None)
        x = x + y.transpose(1, 2).reshape(B, T, self.dim)
        return self.head(x + self.mlp(x))


def _alone_and_packed(model, examples, window):
    rows = pack(examples, window)
    batch = packed_batch(examples, rows, window)
    packed = model(batch.idx, positions=batch.positions, attention_mask=batch.attention_mask)
    for b, row in enumerate(rows):
        start = 0
        for i in row:
            ex = examples[i]
            alone_batch = padded_batch(examples, [i])
            alone = model(alone_batch.idx)
            n = len(ex) - 1
            yield alone[0], packed[b, start:start + n], alone_batch.targets[0], batch.targets[b, start:start + n]
            start += n


def test_packed_logits_and_losses_equal_each_example_alone_reference_model():
    torch.manual_seed(0)
    model = _ReferenceLM().eval()
    examples = _examples([9, 5, 12, 3, 7, 16, 4])
    with torch.no_grad():
        for alone, packed, alone_targets, packed_targets in _alone_and_packed(model, examples, 17):
            assert torch.equal(alone_targets, packed_targets)
            torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(F.cross_entropy(packed, packed_targets), F.cross_entropy(alone, alone_targets))


@pytest.mark.parametrize("position", ["rope", "learned"])
def test_packed_logits_and_losses_equal_each_example_alone_decoderlm(position):
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(vocab_size=VOCAB, max_seq_len=32, d_model=32, n_layer=2, n_head=4, n_kv_head=2,
                                  position=position, ffn="swiglu", norm="rmsnorm")).eval()
    examples = _examples([9, 5, 12, 3, 7, 16, 4])
    with torch.no_grad():
        for alone, packed, alone_targets, packed_targets in _alone_and_packed(model, examples, 17):
            torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(F.cross_entropy(packed, packed_targets), F.cross_entropy(alone, alone_targets))


def test_fit_to_window_truncates_or_drops_and_counts():
    examples = [_example(5, 3), _example(12, 4), _example(12, 10), _example(20, 1)]
    kept, report = fit_to_window(examples, 8)
    assert [len(ex) for ex in kept] == [5, 9, 9] and (report.truncated, report.dropped_no_loss) == (3, 1)
    assert report.kept == 3 and "1 dropped with no loss tokens left" in report.summary()
    kept, report = fit_to_window(examples, 8, overflow="drop")
    assert [len(ex) for ex in kept] == [5] and report.dropped_too_long == 3
    with pytest.raises(DecoderLMError, match="overflow must be one of"):
        fit_to_window(examples, 8, overflow="wrap")


def test_batches_are_a_function_of_the_step():
    examples = _examples(np.random.default_rng(1).integers(3, 18, 40).tolist())
    data = ChatBatches(examples, window=17, batch_size=4, seed=3)
    later = data.batch(7)
    for step in range(7):
        data.batch(step)
    again = ChatBatches(examples, window=17, batch_size=4, seed=3).batch(7)
    assert torch.equal(later.idx, again.idx) and torch.equal(later.attention_mask, again.attention_mask)
    seen = [i for step in range(data.steps_per_epoch) for i in data.rows_at(step)]
    assert len(seen) == len(set(seen))  # no row twice within an epoch
    evaluated = sum(b.loss_tokens for b in data.in_order())
    assert evaluated == sum(int(ex.loss_mask[1:].sum()) for ex in examples)
    padded = ChatBatches(examples, window=17, batch_size=4, layout="padded")
    assert padded.batch(0).idx.shape == (4, 17) and sum(b.loss_tokens for b in padded.in_order()) == evaluated
    train, val = split_examples(examples, 0.1, seed=0)
    assert len(val) == 4 and len(train) == 36


def test_layout_efficiency_by_hand():
    # Window 10; example sizes (tokens - 1) 6, 4, 3, 3, 2, 2 = 20 real positions.
    stats = layout_efficiency([7, 5, 4, 4, 3, 3], window=10, batch_size=2)
    assert stats["rows_packed"] == 2 and stats["packed"] == pytest.approx(20 / 20)
    assert stats["padded_to_window"] == pytest.approx(20 / 60)
    assert stats["padded_to_batch_longest"] == pytest.approx(20 / (2 * 6 + 2 * 3 + 2 * 2))
    assert stats["gain_over_padded_to_window"] == pytest.approx(3.0)


def test_examples_round_trip_through_disk(tmp_path):
    from decoderlm.chat import has_examples, load_examples, save_examples

    examples = _examples([9, 5, 12, 3])
    assert not has_examples(tmp_path)
    save_examples(examples, tmp_path)
    loaded = load_examples(tmp_path)
    assert has_examples(tmp_path) and len(loaded) == 4
    for a, b in zip(examples, loaded):
        assert np.array_equal(a.ids, b.ids) and np.array_equal(a.loss_mask, b.loss_mask)
    (tmp_path / "chat_starts.npy").write_bytes(b"garbage")
    with pytest.raises(DecoderLMError, match="cannot read the chat examples"):
        load_examples(tmp_path)
