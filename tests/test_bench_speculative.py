"""The speculative rows of `decoderlm bench --suite generate`: they run (quick: tiny random models,
eager), and the share of guesses kept is replayed correctly."""

import torch

from decoderlm.bench import decode_speculative


def test_kept_share_counts_the_matching_prefix_of_each_round():
    text = torch.arange(20).view(1, -1)
    right = lambda seq, k: text[0, seq.shape[0]:seq.shape[0] + k]  # noqa: E731
    # 16 new tokens in rounds at 4, 8, 12 and 16, each 3 guesses kept and the model's own token
    assert decode_speculative._kept_share(text, 4, 3, right) == (1.0, 4.0)
    wrong = lambda seq, k: torch.full((k,), -1)  # noqa: E731
    assert decode_speculative._kept_share(text, 4, 3, wrong) == (0.0, 1.0)
    # first guess right, second wrong: rounds keep 1 of 2 and advance by 2
    half = lambda seq, k: torch.stack([text[0, seq.shape[0]], torch.tensor(-1)])  # noqa: E731
    assert decode_speculative._kept_share(text, 4, 2, half) == (0.5, 2.0)
    # no guess (None): a token without a round; here every other position, all guesses right:
    # calls at 4 (no guess, +1), 5, 9, 13 and 17 (+4 each, the last past the end): 16 tokens in 5 calls
    sometimes = lambda seq, k: right(seq, k) if seq.shape[0] % 2 else None  # noqa: E731
    assert decode_speculative._kept_share(text, 4, 3, sometimes) == (1.0, 16 / 5)
    # up to the end: a last round with one token left checks one guess (4 of 5 kept here)
    late_miss = lambda seq, k: right(seq, k) if seq.shape[0] < 8 else wrong(seq, k)  # noqa: E731
    assert decode_speculative._kept_share(text[:, :10], 4, 4, late_miss) == (0.8, 3.0)


def test_quick_run_reports_both_rows(monkeypatch):
    monkeypatch.delenv("DECODERLM_BENCH_TARGET", raising=False)
    rows = decode_speculative.run(quick=True)
    assert [r["contender"] for r in rows] == ["draft model", decode_speculative.LOOKUP_ROW]
    for row in rows:
        assert row["models"] == "random weights (timing only)"
        assert 0.0 <= row["guesses kept"] <= 1.0 and row["speed-up"] > 0
        assert 1.0 <= row["new tokens per model call"] <= 1 + (4 if row["contender"] == "draft model" else 32)
        assert row["speed-up if every guess were kept"] > 0
        assert row["same ids as plain greedy (fp32)"] is True
    # a random model's greedy text soon repeats itself, which lookup guesses
    assert rows[1]["guesses kept"] > 0


def test_the_prompt_lookup_row_can_take_its_own_model(monkeypatch, tmp_path):
    """DECODERLM_BENCH_COPY_TARGET names the model of the prompt-lookup row (one that copies); without
    it, and in quick runs, the row uses the target."""
    from decoderlm import DecoderLM, ModelConfig
    from decoderlm.data.tokenizers import train_tokenizer
    from decoderlm.lm import LanguageModel

    tokenizer = train_tokenizer("char", ["a passage and the same passage again"], 40)
    model = DecoderLM(ModelConfig(vocab_size=tokenizer.vocab_size, max_seq_len=64, d_model=32, n_layer=1, n_head=2))
    LanguageModel.from_model(model, tokenizer).save(tmp_path / "copier")
    target = object()
    monkeypatch.delenv("DECODERLM_BENCH_COPY_TARGET", raising=False)
    assert decode_speculative._copy_model(target, None, quick=False) == (target, None, None)
    monkeypatch.setenv("DECODERLM_BENCH_COPY_TARGET", str(tmp_path / "copier"))
    assert decode_speculative._copy_model(target, None, quick=True)[0] is target
    copier, copier_tokenizer, origin = decode_speculative._copy_model(target, None, quick=False)
    assert next(copier.parameters()).dtype == torch.bfloat16 and copier.config.d_model == 32
    assert copier_tokenizer.encode("a passage") == tokenizer.encode("a passage")
    assert origin == f"trained: {tmp_path / 'copier'}"


def test_best_case_compares_k_plus_1_steps_with_one_full_round(monkeypatch):
    """(k + 1) steps' time against k draft steps + one verification, from each call's own cost."""
    clock = [0.0]

    class FakeRunner:  # each call advances a fake clock by its cost
        def __init__(self, model, cache_len, compiled):
            self.step_cost = model["step"]
            self.filled = 0

        def prefill(self, tokens):
            pass

        def step(self, token):
            clock[0] += self.step_cost

        def verify(self, tokens):
            clock[0] += 0.5 * tokens.shape[0]

    monkeypatch.setattr(decode_speculative, "StaticCacheRunner", FakeRunner)
    monkeypatch.setattr(decode_speculative.time, "perf_counter", lambda: clock[0])
    target, draft = {"step": 1.0}, {"step": 0.25}
    # lookup, k = 15: 16 steps (16.0) against a verification of 16 positions (8.0)
    assert decode_speculative._best_case(target, 15, False, cache_len=64) == 2.0
    # a draft adds k + 1 = 4 of its steps (1.0): 4.0 / (1.0 + 2.0)
    assert abs(decode_speculative._best_case(target, 3, False, cache_len=64, draft=draft) - 4.0 / 3.0) < 1e-9
