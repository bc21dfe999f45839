"""The speculative rows of `decoderlm bench --suite generate`: they run (quick: tiny random models,
eager), and the share of guesses kept is replayed correctly."""

import torch

from decoderlm.bench import decode_speculative


def test_kept_share_counts_the_matching_prefix_of_each_round():
    text = torch.arange(20).view(1, -1)
    right = lambda seq, k: text[0, seq.shape[0]:seq.shape[0] + k]  # noqa: E731
    assert decode_speculative._kept_share(text, 4, 3, right) == 1.0
    wrong = lambda seq, k: torch.full((k,), -1)  # noqa: E731
    assert decode_speculative._kept_share(text, 4, 3, wrong) == 0.0
    # first guess right, second wrong: rounds keep 1 of 2 and advance by 2
    half = lambda seq, k: torch.stack([text[0, seq.shape[0]], torch.tensor(-1)])  # noqa: E731
    assert decode_speculative._kept_share(text, 4, 2, half) == 0.5


def test_quick_run_reports_both_rows(monkeypatch):
    monkeypatch.delenv("DECODERLM_BENCH_TARGET", raising=False)
    rows = decode_speculative.run(quick=True)
    assert [r["contender"] for r in rows] == ["draft model", "prompt lookup 8, copy prompt"]
    for row in rows:
        assert row["models"] == "random weights (timing only)"
        assert 0.0 <= row["guesses kept"] <= 1.0 and row["speed-up"] > 0
        assert row["same ids as plain greedy (fp32)"] is True
    # a random model's greedy text soon repeats itself, which lookup guesses
    assert rows[1]["guesses kept"] > 0
