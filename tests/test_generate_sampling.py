"""Token-level generation: the KV-cache path against full recomputation, sampling properties,
streaming, context overflow and bad input."""

from __future__ import annotations

import warnings

import pytest
import torch

from decoderlm import DecoderLM, DecoderLMError, ModelConfig
from decoderlm.generate import ContextOverflowWarning, generate

VOCAB = 61


def _model(position="rope", window=64, **overrides):
    torch.manual_seed(0)
    base = dict(vocab_size=VOCAB, max_seq_len=window, d_model=32, n_layer=2, n_head=4, n_kv_head=2,
                position=position, init_std=0.4, tie_embeddings=False)
    if position == "rope":
        base.update(norm="rmsnorm", ffn="swiglu")
    base.update(overrides)
    return DecoderLM(ModelConfig(**base)).eval()


@torch.no_grad()
def _greedy_by_recomputation(model, prompt, n, window_rule):
    """The seed systems' loop: run the whole (cropped) context every step, no cache."""
    seq = prompt.clone()
    for _ in range(n):
        context = window_rule(seq)
        logits = model(context)[:, -1]
        seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
    return seq


@pytest.mark.parametrize("position", ["rope", "learned", "sinusoidal"])
def test_cached_greedy_equals_full_recomputation(position):
    model = _model(position)
    prompt = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
    expected = _greedy_by_recomputation(model, prompt, 30, lambda s: s)
    got = generate(model, prompt, 30, temperature=0)
    assert torch.equal(got, expected)
    assert len(set(got[0, 7:].tolist())) > 5


def test_left_padded_rows_equal_their_unpadded_runs():
    model = _model()
    ids = torch.randint(0, VOCAB, (3, 9), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    mask[2, :8] = 0
    got = generate(model, ids, 20, temperature=0, attention_mask=mask)
    for row in range(3):
        alone = generate(model, ids[row][mask[row].bool()].unsqueeze(0), 20, temperature=0)
        assert torch.equal(got[row, 9:], alone[0, -20:])


@pytest.mark.parametrize("position", ["learned", "sinusoidal"])
def test_absolute_positions_slide_the_window_like_the_seed(position):
    """Past the window, every token is predicted from the last `window` tokens (seed 003's crop)."""
    window = 16
    model = _model(position, window=window)
    prompt = torch.randint(0, VOCAB, (1, 5), generator=torch.Generator().manual_seed(3))
    expected = _greedy_by_recomputation(model, prompt, 40, lambda s: s[:, -window:])
    with pytest.warns(ContextOverflowWarning) as caught:
        got = generate(model, prompt, 40, temperature=0)
    assert len([w for w in caught if issubclass(w.category, ContextOverflowWarning)]) == 1  # told once
    assert torch.equal(got, expected)


def test_rope_runs_to_the_window_then_crops():
    """RoPE: the cache fills to the window, then the last 3/4 of the window is kept and recomputed."""
    window = 16
    keep = window - window // 4
    model = _model("rope", window=window)
    prompt = torch.randint(0, VOCAB, (1, 5), generator=torch.Generator().manual_seed(4))

    offset = 0

    def rule(seq):
        nonlocal offset
        if seq.shape[1] - offset > window:
            offset = seq.shape[1] - keep
        return seq[:, offset:]

    expected = _greedy_by_recomputation(model, prompt, 40, rule)
    with pytest.warns(ContextOverflowWarning):
        got = generate(model, prompt, 40, temperature=0)
    assert torch.equal(got, expected)


def test_prompt_longer_than_the_window_is_cropped_with_a_warning():
    window = 16
    model = _model("learned", window=window)
    prompt = torch.randint(0, VOCAB, (1, 40), generator=torch.Generator().manual_seed(5))
    with pytest.warns(ContextOverflowWarning):
        got = generate(model, prompt, 5, temperature=0)
    expected = _greedy_by_recomputation(model, prompt, 5, lambda s: s[:, -window:])
    assert torch.equal(got, expected)


def test_no_warning_within_the_window():
    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generate(model, torch.tensor([[1, 2, 3]]), 61, temperature=0)  # 64 positions exactly


def test_top_k_one_sampling_equals_greedy():
    model = _model()
    prompt = torch.tensor([[5, 9, 2]])
    assert torch.equal(generate(model, prompt, 25, top_k=1, seed=3, temperature=1.7),
                       generate(model, prompt, 25, temperature=0))


def test_seed_reproduces_and_different_seeds_differ():
    model = _model()
    prompt = torch.tensor([[5, 9, 2], [7, 7, 7]])
    a = generate(model, prompt, 25, seed=11)
    assert torch.equal(a, generate(model, prompt, 25, seed=11))
    assert not torch.equal(a, generate(model, prompt, 25, seed=12))


def test_filters_that_keep_everything_change_nothing():
    model = _model()
    prompt = torch.tensor([[5, 9, 2]])
    plain = generate(model, prompt, 25, seed=5)
    assert torch.equal(generate(model, prompt, 25, seed=5, top_p=1.0), plain)
    assert torch.equal(generate(model, prompt, 25, seed=5, top_k=VOCAB), plain)
    assert torch.equal(generate(model, prompt, 25, seed=5, min_p=0.0, repetition_penalty=1.0), plain)


@pytest.mark.parametrize("settings", [dict(temperature=0), dict(seed=4, top_p=0.9, temperature=1.2)])
def test_streaming_yields_the_same_tokens(settings):
    model = _model()
    ids = torch.tensor([[3, 4, 5, 6], [0, 0, 8, 9]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    whole = generate(model, ids, 20, attention_mask=mask, eos_token_id=7, pad_token_id=0, **settings)
    steps = list(generate(model, ids, 20, attention_mask=mask, eos_token_id=7, pad_token_id=0, stream=True, **settings))
    assert all(s.shape == (2,) for s in steps)
    assert torch.equal(torch.stack(steps, dim=1), whole[:, 4:])


def test_eos_ends_rows_and_padding_follows():
    model = _model()
    prompt = torch.tensor([[5, 9, 2], [1, 2, 3]])
    free = generate(model, prompt, 20, temperature=0)
    eos = free[0, 3 + 4].item()
    out = generate(model, prompt, 20, temperature=0, eos_token_id=eos, pad_token_id=60)
    first = (out[0, 3:] == eos).nonzero()[0].item()
    assert (out[0, 3 + first + 1:] == 60).all()
    assert torch.equal(out[0, :3 + first + 1], free[0, :3 + first + 1])
    one_row = generate(model, prompt[:1], 20, temperature=0, eos_token_id=eos)
    assert one_row.shape[1] == 3 + first + 1  # every row finished: generation stopped there


def test_train_mode_is_restored_and_dropout_is_off():
    model = _model(dropout=0.5)
    model.train()
    prompt = torch.tensor([[5, 9, 2]])
    a = generate(model, prompt, 10, temperature=0)
    assert model.training
    assert torch.equal(a, generate(model, prompt, 10, temperature=0))  # dropout would make these differ
    # each module gets its own mode back, a model with some modules in eval mode included
    model.blocks[0].eval()
    generate(model, prompt, 4, temperature=0)
    assert not any(m.training for m in model.blocks[0].modules())
    assert all(m.training for m in model.blocks[1].modules()) and model.training


def test_output_can_be_used_for_training():
    model = _model()
    out = generate(model, torch.tensor([[5, 9, 2]]), 8, temperature=0)
    loss = model(out[:, :-1], out[:, 1:])
    loss.backward()  # an inference-mode tensor would refuse this


def test_empty_prompt_starts_from_eos():
    model = _model()
    out = generate(model, torch.zeros(1, 0, dtype=torch.long), 5, temperature=0, eos_token_id=[7, 8])
    assert out[0, 0].item() == 7
    assert torch.equal(out, generate(model, torch.tensor([[7]]), 5, temperature=0, eos_token_id=[7, 8]))
    with pytest.raises(DecoderLMError, match="empty prompt"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 5)


def test_zero_new_tokens_returns_the_prompt():
    model = _model()
    prompt = torch.tensor([[5, 9, 2]])
    assert torch.equal(generate(model, prompt, 0), prompt)


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(temperature=-0.5), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.2), "top_p"),
    (dict(top_k=-1), "top_k"),
    (dict(min_p=2.0), "min_p"),
    (dict(num_beams=0), "num_beams"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(eos_token_id=VOCAB), "eos_token_id"),
    (dict(num_beams=2, top_k=5), "beam search"),
    (dict(num_beams=2, stream=True), "streaming"),
    (dict(early_stopping="sometimes", num_beams=2), "early_stopping"),
])
def test_bad_settings_are_one_line_errors(kwargs, message):
    model = _model()
    kwargs = {"max_new_tokens": 5, **kwargs}
    with pytest.raises(DecoderLMError, match=message) as err:
        generate(model, torch.tensor([[1, 2]]), **kwargs)
    assert "\n" not in str(err.value)


def test_beam_search_with_one_beam_and_greedy_agree_and_beams_score_higher():
    model = _model()
    prompt = torch.tensor([[5, 9, 2]])
    greedy = generate(model, prompt, 12, temperature=0)
    assert torch.equal(generate(model, prompt, 12, temperature=0, num_beams=1), greedy)
    beams = generate(model, prompt, 12, num_beams=4, length_penalty=0.0)

    def log_prob(seq):
        with torch.no_grad():
            logp = model(seq[:, :-1]).log_softmax(-1)
        return logp[0, 2:].gather(-1, seq[0, 3:].unsqueeze(-1)).sum().item()

    assert log_prob(beams) >= log_prob(greedy) - 1e-5


def test_checking_for_the_end_every_few_steps_gives_the_same_result():
    """Accelerators check "all finished?" every 8 steps; the surplus steps must be trimmed away."""
    from decoderlm.generate.decoding import Sequences
    from decoderlm.generate.options import GenerationOptions
    from decoderlm.generate.sampling import sample_steps

    model = _model()
    prompt = torch.tensor([[5, 9, 2], [1, 2, 3]])
    free = generate(model, prompt, 20, temperature=0)
    eos = (free[0, 3 + 5].item(), free[1, 3 + 2].item())
    expected = generate(model, prompt, 20, temperature=0, eos_token_id=list(eos), pad_token_id=60)
    assert expected.shape[1] < 3 + 20
    for every in (3, 8):
        opts = GenerationOptions(max_new_tokens=20, temperature=0, eos_token_ids=eos, pad_token_id=60)
        seqs = Sequences(model, prompt, None, 20)
        for _ in sample_steps(seqs, opts, VOCAB, check_every=every):
            pass
        assert torch.equal(seqs.all_tokens(), expected)
