"""Speculative decoding: greedy output equals plain greedy decoding; samples follow the model's
distribution (chi-square tests); bad input is one line."""

from __future__ import annotations

import pytest
import torch

from decoderlm import DecoderLM, DecoderLMError, ModelConfig
from decoderlm.compile_support import can_compile
from decoderlm.generate import generate
from decoderlm.generate.options import GenerationOptions
from decoderlm.generate.speculative import _Chooser, accept


def model(seed, d_model=64, n_layer=2, vocab=64, init_std=0.3):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab, max_seq_len=96, d_model=d_model, n_layer=n_layer, n_head=4,
                      position="rope", norm="rmsnorm", ffn="swiglu", init_std=init_std)
    return DecoderLM(cfg).eval()


TARGET, DRAFT = model(0), model(1, d_model=32, n_layer=1)


def prompts(n):
    g = torch.Generator().manual_seed(7)
    for i in range(n):
        length = int(torch.randint(1, 14, (1,), generator=g))
        yield torch.randint(0, 64, (1, length), generator=g)


def test_greedy_equals_plain_greedy_on_many_prompts(monkeypatch):
    from decoderlm.generate.model_calls import StaticCacheRunner

    verified = []
    original = StaticCacheRunner.verify
    monkeypatch.setattr(StaticCacheRunner, "verify", lambda self, t: verified.append(len(t)) or original(self, t))
    kept_some = rounds_with_lookup = 0
    for i, prompt in enumerate(prompts(10)):
        plain = generate(TARGET, prompt, 24, temperature=0, compile=False)
        assert torch.equal(generate(TARGET, prompt, 24, temperature=0, draft_model=DRAFT), plain)
        # lookup guesses after a three-token match: a prompt written twice gives it some
        doubled = prompt.repeat(1, 2)
        verified.clear()
        assert torch.equal(generate(TARGET, doubled, 24, temperature=0, prompt_lookup=3),
                           generate(TARGET, doubled, 24, temperature=0, compile=False))
        rounds_with_lookup += bool(verified)
        if i < 2:  # the target as its own draft: every guess is kept
            assert torch.equal(generate(TARGET, prompt, 24, temperature=0, draft_model=TARGET), plain)
        kept_some += len(set(plain[0, prompt.shape[1]:].tolist())) > 3
    assert kept_some >= 8, "a meaningful comparison needs varied continuations"
    assert rounds_with_lookup >= 5, "lookup must have guessed on most prompts"


def test_eos_stop_strings_and_streaming_match_plain_decoding():
    prompt = next(prompts(1))
    plain = generate(TARGET, prompt, 30, temperature=0, compile=False)
    eos = int(plain[0, prompt.shape[1] + 5])  # a token the continuation reaches
    expected = generate(TARGET, prompt, 30, temperature=0, eos_token_id=eos, compile=False)
    got = generate(TARGET, prompt, 30, temperature=0, eos_token_id=eos, draft_model=DRAFT)
    assert torch.equal(got, expected) and got.shape[1] < plain.shape[1]
    for speculation in ({"prompt_lookup": 2}, {"draft_model": TARGET}):  # the latter keeps every guess
        streamed = list(generate(TARGET, prompt, 30, temperature=0, stream=True, **speculation))
        assert all(token.shape == (1,) for token in streamed)  # one token at a time, as plain streams
        assert torch.equal(torch.cat(streamed), plain[0, prompt.shape[1]:])
    # a stop_fn (stop strings) ends the text after the same token as plain decoding, mid-round too
    # (the target as its own draft hands on rounds of 5 tokens)
    mark = int(plain[0, prompt.shape[1] + 9])
    stop = lambda seqs: (seqs.generated() == mark).any(-1)  # noqa: E731
    expected = generate(TARGET, prompt, 30, temperature=0, stop_fn=stop, compile=False)
    assert expected.shape[1] < plain.shape[1]
    for speculation in ({"prompt_lookup": 4}, {"draft_model": DRAFT}, {"draft_model": TARGET}):
        assert torch.equal(generate(TARGET, prompt, 30, temperature=0, stop_fn=stop, **speculation), expected)
    # sampling with a seed is reproducible
    a = generate(TARGET, prompt, 20, temperature=0.9, seed=3, draft_model=DRAFT)
    assert torch.equal(a, generate(TARGET, prompt, 20, temperature=0.9, seed=3, draft_model=DRAFT))


def _chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's test of observed counts against expected probabilities (cells with mass only)."""
    expected = probs * counts.sum()
    used = expected > 0
    assert counts[~used].sum() == 0, "a token the distribution cannot produce was drawn"
    stat = ((counts[used] - expected[used]) ** 2 / expected[used]).sum()
    dof = int(used.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), stat.double() / 2))


@pytest.mark.parametrize("draft_kind", ["model", "point mass"])
def test_acceptance_rule_reproduces_the_target_distribution(draft_kind):
    """With position-wise fixed target distributions p_0, p_1 the first two emitted tokens must be
    independent draws from p_0 and p_1, whatever the draft distribution q."""
    V, k, n = 5, 2, 2000
    g = torch.Generator().manual_seed(0)
    target_logits = torch.randn(k + 1, V, generator=g) * 1.5
    draft_logits = torch.randn(k, V, generator=g) * 1.5
    opts = GenerationOptions(max_new_tokens=k + 1, temperature=0.8, top_k=4)
    chooser = _Chooser(opts, V, torch.Generator().manual_seed(1))
    p = chooser.probs(target_logits)
    q = chooser.probs(draft_logits)
    counts = torch.zeros(V * V)
    for _ in range(n):
        if draft_kind == "model":
            drafts = torch.multinomial(q, 1, generator=chooser.generator).view(k)
            kept, own = accept(target_logits, drafts, q, chooser)
        else:  # prompt lookup: a fixed guess
            drafts = torch.tensor([1, 3])
            kept, own = accept(target_logits, drafts, None, chooser)
        emitted = torch.cat([drafts[:kept], own])
        if emitted.shape[0] >= 2:
            counts[emitted[0] * V + emitted[1]] += 1
        else:  # first guess rejected: the second token comes from the next round, drawn from p_1 there
            kept2, own2 = accept(target_logits[1:], drafts[1:], None if draft_kind != "model" else q[1:], chooser)
            second = drafts[1] if kept2 else own2[0]
            counts[emitted[0] * V + second] += 1
    joint = (p[0][:, None] * p[1][None, :]).flatten()
    assert _chi_square_p_value(counts, joint) > 1e-3


def test_sampled_first_token_follows_the_model():
    """End to end: the first sampled token with prompt lookup has the model's own distribution."""
    target = model(2, d_model=32, n_layer=1, vocab=6, init_std=0.5)
    prompt = torch.tensor([[1, 2, 3, 4, 1, 2, 3]])  # "1 2 3" repeats, so lookup guesses 4
    from decoderlm.generate.drafts import PromptLookup

    assert PromptLookup().propose(prompt[0], 2)[0].tolist() == [4, 1]
    with torch.no_grad():
        probs = (target(prompt)[0, -1] / 0.9).softmax(-1)
    counts = torch.zeros(6)
    for seed in range(200):
        token = generate(target, prompt, 1, temperature=0.9, seed=seed, prompt_lookup=2)[0, -1]
        counts[token] += 1
    assert _chi_square_p_value(counts, probs) > 1e-3


def test_prompt_lookup_copies_after_the_latest_three_token_match_or_guesses_nothing(monkeypatch):
    from decoderlm.generate.drafts import PromptLookup

    lookup = PromptLookup()
    text = torch.tensor([5, 1, 2, 3, 7, 8, 1, 2, 3, 9, 1, 2, 3])
    guesses, q = lookup.propose(text, 2)  # the latest earlier "1 2 3" is followed by 9, 1
    assert guesses.tolist() == [9, 1] and q is None
    assert lookup.propose(text, 5)[0].tolist() == [9, 1, 2, 3, 3]  # padded with the last token
    assert lookup.propose(torch.tensor([1, 2, 4, 1, 2]), 3) is None  # "1 2" recurs, no three tokens do
    assert lookup.propose(torch.tensor([1, 2, 3]), 3) is None
    # with nothing to guess, decoding takes ordinary steps and verifies nothing
    from decoderlm.generate.model_calls import StaticCacheRunner

    monkeypatch.setattr(StaticCacheRunner, "verify", lambda *a: pytest.fail("verified without guesses"))
    prompt = torch.arange(10).view(1, -1)  # no token repeats in the prompt
    target = model(4, vocab=64)
    plain = generate(target, prompt, 2, temperature=0, compile=False)
    assert torch.equal(generate(target, prompt, 2, temperature=0, compile=False, prompt_lookup=4), plain)


def test_a_draft_catches_up_on_ordinary_steps_in_one_call(monkeypatch):
    """After the back-off's ordinary steps the draft reads the tokens it missed in one call, and
    guesses what it would have guessed stepping through them."""
    import decoderlm.generate.drafts as drafts
    from decoderlm.generate.model_calls import StaticCacheRunner

    seq = torch.randint(0, 64, (12,), generator=torch.Generator().manual_seed(2))
    choose = _Chooser(GenerationOptions(max_new_tokens=1, temperature=0), 64, None)
    extended = []
    original = StaticCacheRunner.extend
    monkeypatch.setattr(StaticCacheRunner, "extend",
                        lambda self, tokens: extended.append(len(tokens)) or original(self, tokens))

    def rounds(catch_up_at_once):
        monkeypatch.setattr(drafts, "STEP_THROUGH_AT_MOST", catch_up_at_once)
        draft = drafts.DraftModel(DRAFT, 64, compiled=False)
        draft.prefill(seq[:4])
        with torch.inference_mode():
            first = draft.propose(seq[:5], 3, choose)[0]  # a round: 2 tokens unseen
            draft.keep(5)
            second = draft.propose(seq, 3, choose)[0]  # after ordinary steps: 7 unseen
        return first, second, int(draft.runner.filled)

    stepwise = rounds(100)
    assert extended == []
    at_once = rounds(2)
    assert extended == [6]  # all but the last unseen token in one call
    assert all(torch.equal(a, b) for a, b in zip(at_once[:2], stepwise[:2]))
    assert at_once[2] == stepwise[2] == 12 + 2


def test_bad_speculative_input_is_one_line():
    prompt = torch.tensor([[1, 2, 3]])
    other_vocab = model(3, d_model=32, n_layer=1, vocab=50)
    with pytest.raises(DecoderLMError, match="vocabulary"):
        generate(TARGET, prompt, 5, draft_model=other_vocab)
    with pytest.raises(DecoderLMError, match="one prompt at a time"):
        generate(TARGET, prompt.repeat(2, 1), 5, prompt_lookup=2)
    with pytest.raises(DecoderLMError, match="N >= 1"):
        generate(TARGET, prompt, 5, prompt_lookup=0)
    with pytest.raises(DecoderLMError, match="repetition penalty"):
        generate(TARGET, prompt, 5, prompt_lookup=2, repetition_penalty=1.2)
    with pytest.raises(DecoderLMError, match="context window"):
        generate(TARGET, prompt, 95, prompt_lookup=2)


@pytest.mark.skipif(not can_compile(torch.device("cpu")), reason="torch.compile needs a C++ compiler")
def test_compiled_draft_and_verification_steps_decode_the_same_tokens():
    prompt = next(prompts(1))
    plain = generate(TARGET, prompt, 20, temperature=0, compile=False)
    assert torch.equal(generate(TARGET, prompt, 20, temperature=0, draft_model=DRAFT, compile=True), plain)
    assert torch.equal(generate(TARGET, prompt, 20, temperature=0, prompt_lookup=4, compile=True), plain)
    # what decides whether generate announces a compile: these calls (4 guesses + 1) are built now
    from decoderlm.generate import packaged
    from decoderlm.generate.defaults import speculation_compiled_already
    from decoderlm.generate.speculative import speculative_cache_length

    cache_len = speculative_cache_length(TARGET, prompt.shape[1], 20, 4, DRAFT)
    assert speculation_compiled_already(TARGET, cache_len, 5, DRAFT)
    if packaged.supported(TARGET, False):  # built ahead of time: each shape is a library of its own
        assert not speculation_compiled_already(TARGET, cache_len, 7)


def test_failed_guesses_back_off_to_plain_steps_without_changing_the_text(monkeypatch):
    """Rounds that keep fewer than half their guesses make the next 1, 2, 4 ... 16 tokens ordinary
    steps; a round keeping half or more resets."""
    from decoderlm.generate.model_calls import StaticCacheRunner
    from decoderlm.generate.speculative import Backoff

    backoff, plain = Backoff(), []
    for kept in (0, 1, 0, 2, 0, 4, 1):
        backoff.after_round(kept, 4)
        steps = 0
        while backoff.plain_now():
            steps += 1
        plain.append(steps)
    assert plain == [1, 2, 4, 0, 1, 0, 1]

    calls = {"verify": 0, "step": 0}
    for name in calls:
        original = getattr(StaticCacheRunner, name)

        def counted(self, *args, _name=name, _original=original):
            calls[_name] += 1
            return _original(self, *args)

        monkeypatch.setattr(StaticCacheRunner, name, counted)
    prompt = torch.randint(0, 64, (1, 8), generator=torch.Generator().manual_seed(3)).repeat(1, 2)  # guesses
    plain_ids = generate(TARGET, prompt, 40, temperature=0, compile=False)
    assert torch.equal(generate(TARGET, prompt, 40, temperature=0, prompt_lookup=4, compile=False), plain_ids)
    assert calls["step"] > 0 and calls["verify"] > 0 and calls["verify"] + calls["step"] <= 40
