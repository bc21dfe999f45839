"""Logits processors against their transformers counterparts, and the sampled distribution against
the filtered one (chi-square goodness of fit)."""

from __future__ import annotations

import pytest
import torch

from decoderlm import DecoderLM, ModelConfig
from decoderlm.generate import (apply_temperature, generate, min_p_filter, repetition_penalty, sampling_warpers,
                                top_k_filter, top_p_filter)
from decoderlm.generate.processors import apply_all


def _logits(seed=0, batch=4, vocab=50):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, vocab, generator=g) * 3
    logits[0, :5] = logits[0, 5]  # ties at the cut-offs
    return logits


@pytest.fixture(scope="module")
def hf():
    return pytest.importorskip("transformers")


@pytest.mark.parametrize("k, keep", [(1, 1), (5, 1), (5, 8), (49, 1), (50, 1), (80, 1)])
def test_top_k_matches_transformers(hf, k, keep):
    logits = _logits()
    expected = hf.TopKLogitsWarper(top_k=k, min_tokens_to_keep=keep)(None, logits.clone())
    assert torch.equal(top_k_filter(logits, k, min_tokens_to_keep=keep), expected)


@pytest.mark.parametrize("p, keep", [(0.1, 1), (0.5, 1), (0.9, 1), (0.9, 3), (1.0, 1), (1e-6, 2)])
def test_top_p_matches_transformers(hf, p, keep):
    for seed in range(3):
        logits = _logits(seed)
        expected = hf.TopPLogitsWarper(top_p=p, min_tokens_to_keep=keep)(None, logits.clone())
        assert torch.equal(top_p_filter(logits, p, min_tokens_to_keep=keep), expected)


@pytest.mark.parametrize("min_p, keep", [(0.0, 1), (0.05, 1), (0.3, 1), (0.3, 4), (1.0, 1)])
def test_min_p_matches_transformers(hf, min_p, keep):
    for seed in range(3):
        logits = _logits(seed)
        expected = hf.MinPLogitsWarper(min_p=min_p, min_tokens_to_keep=keep)(None, logits.clone())
        assert torch.equal(min_p_filter(logits, min_p, min_tokens_to_keep=keep), expected)


@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5])
def test_temperature_matches_transformers(hf, temperature):
    logits = _logits()
    expected = hf.TemperatureLogitsWarper(temperature)(None, logits.clone())
    assert torch.equal(apply_temperature(logits, temperature), expected)


@pytest.mark.parametrize("penalty", [0.7, 1.0, 1.3])
def test_repetition_penalty_matches_transformers(hf, penalty):
    logits = _logits()
    previous = torch.randint(0, 50, (4, 12), generator=torch.Generator().manual_seed(3))
    expected = hf.RepetitionPenaltyLogitsProcessor(penalty)(previous, logits.clone())
    got = repetition_penalty(logits, previous, penalty)
    assert torch.equal(got, expected)
    if penalty != 1.0:
        assert not torch.equal(got, logits)


def test_warper_chain_matches_transformers(hf):
    logits = _logits()
    chain = hf.LogitsProcessorList([hf.TemperatureLogitsWarper(0.7), hf.TopKLogitsWarper(20),
                                    hf.TopPLogitsWarper(0.8), hf.MinPLogitsWarper(0.05)])
    ours = sampling_warpers(temperature=0.7, top_k=20, top_p=0.8, min_p=0.05, vocab_size=50)
    assert torch.equal(apply_all(logits, ours), chain(None, logits.clone()))


def test_settings_that_change_nothing_are_left_out():
    assert sampling_warpers(temperature=1.0, top_k=50, top_p=1.0, min_p=0.0, vocab_size=50) == []
    assert sampling_warpers(top_k=0) == []


# -- the sampled distribution ------------------------------------------------------------------------
VOCAB = 8


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=VOCAB, max_seq_len=16, d_model=16, n_layer=1, n_head=2, position="rope",
                         norm="rmsnorm", ffn="swiglu", tie_embeddings=False, init_std=0.3)
    return DecoderLM(config).eval()


def _chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    """Pearson's statistic over the categories the distribution allows; p = P(chi2_df >= stat),
    the chi-square survival function, which is the regularised upper incomplete gamma function
    Q(df/2, stat/2) (torch.special.gammaincc; scipy is not a dependency)."""
    allowed = probs > 0
    n = counts.sum()
    expected = n * probs[allowed]
    stat = ((counts[allowed] - expected) ** 2 / expected).sum()
    df = int(allowed.sum()) - 1
    p_value = torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), stat.double() / 2)
    return float(p_value), df


def _sample_first_tokens(model, n, seed, **settings):
    prompt = torch.tensor([[3, 1, 4]]).expand(n, 3)
    out = generate(model, prompt, 1, seed=seed, **settings)
    return torch.bincount(out[:, -1], minlength=VOCAB).double()


@pytest.mark.parametrize("settings", [
    dict(temperature=0.8, top_k=5),
    dict(temperature=1.3, top_p=0.8),
    dict(min_p=0.2),
    dict(temperature=0.7, top_k=6, top_p=0.9, min_p=0.1, repetition_penalty=1.5),
])
def test_sampled_frequencies_match_the_filtered_distribution(small_model, settings):
    """20,000 draws of the first new token (one batch of identical prompts) against the model's next-
    token distribution after the same filters; transformers' processors agree with ours (above)."""
    n = 20000
    counts = _sample_first_tokens(small_model, n, seed=7, **settings)
    with torch.no_grad():
        logits = small_model(torch.tensor([[3, 1, 4]]))[:, -1].float()
    if settings.get("repetition_penalty", 1.0) != 1.0:
        logits = repetition_penalty(logits, torch.tensor([[3, 1, 4]]), settings["repetition_penalty"])
    warpers = sampling_warpers(settings.get("temperature", 1.0), settings.get("top_k"), settings.get("top_p"),
                               settings.get("min_p"), VOCAB)
    probs = apply_all(logits, warpers).softmax(-1)[0].double()
    assert 2 <= int((probs > 0).sum()) < VOCAB, "the filters should remove some but not all tokens"
    assert counts[probs == 0].sum() == 0, "sampled a token the filters removed"
    p_value, df = _chi_square_p_value(counts, probs)
    assert p_value > 1e-3, f"chi-square p = {p_value:.2e} with {df} degrees of freedom"

    # The same test rejects the unfiltered distribution, so it has the power to notice a mistake.
    unfiltered = logits.softmax(-1)[0].double()
    wrong_p, _ = _chi_square_p_value(counts + 0.0, unfiltered)
    assert wrong_p < 1e-6
