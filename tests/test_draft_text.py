"""scripts/draft_text.py, which writes a model's own text to distil a speculative draft on: the
recipe's text, the same on a second run, nothing left behind by a failure, and bad input refused
with one line before anything is written."""

import sys
from pathlib import Path

import pytest
import torch

import decoderlm
from decoderlm.generate import generate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import draft_text  # noqa: E402

from test_train_support import tiny_run, tree_snapshot  # noqa: E402

SMALL = ["--batches", "2", "--rows", "3", "--tokens", "40", "--no-compile"]


def test_writes_the_models_text_reproducibly(tmp_path):
    run = tiny_run(tmp_path)
    assert draft_text.main([str(run), str(tmp_path / "text"), *SMALL]) == 0
    files = sorted((tmp_path / "text").iterdir())
    assert [f.name for f in files] == ["text-0000.txt", "text-0001.txt"]
    lm = decoderlm.load(run, dtype="float32")
    # batch 0 rebuilt by hand: 4 random start tokens (dropped), 28 sampled at 0.8, then greedy
    start = torch.randint(0, lm.model.config.vocab_size, (3, 4), generator=torch.Generator().manual_seed(1000))
    ids = generate(lm.model, start, 28, temperature=0.8, seed=0, compile=False)
    ids = generate(lm.model, ids, 12, temperature=0, compile=False)
    assert files[0].read_text() == "".join(lm.tokenizer.decode(row.tolist()) + "\n\n" for row in ids[:, 4:])
    # batch 1: plain samples at 0.8
    start = torch.randint(0, lm.model.config.vocab_size, (3, 4), generator=torch.Generator().manual_seed(1001))
    ids = generate(lm.model, start, 40, temperature=0.8, seed=1, compile=False)
    assert files[1].read_text() == "".join(lm.tokenizer.decode(row.tolist()) + "\n\n" for row in ids[:, 4:])
    assert draft_text.main([str(run), str(tmp_path / "again"), *SMALL]) == 0
    assert tree_snapshot(tmp_path / "again") == tree_snapshot(tmp_path / "text")


def test_a_failure_leaves_nothing_and_bad_input_is_one_line(tmp_path, monkeypatch, capsys):
    run = tiny_run(tmp_path)
    before = set(tmp_path.iterdir())
    calls = []

    def fails_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return ["some text"]

    monkeypatch.setattr(draft_text, "model_text", fails_second_batch)
    assert draft_text.main([str(run), str(tmp_path / "out"), *SMALL]) == 130
    assert set(tmp_path.iterdir()) == before  # no directory, no staged leftover
    monkeypatch.undo()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's")
    mine = tree_snapshot(tmp_path / "mine")
    capsys.readouterr()
    for args in ([str(run), str(tmp_path / "mine"), *SMALL],  # exists: never replaced
                 [str(tmp_path / "absent"), str(tmp_path / "t2"), *SMALL],
                 [str(run), str(tmp_path / "t3"), "--tokens", "100", "--no-compile"],  # past the context
                 [str(run), str(tmp_path / "t4"), "--batches", "0"]):
        assert draft_text.main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("draft_text: ") and err.count("\n") == 1, err
    assert tree_snapshot(tmp_path / "mine") == mine
    assert not any((tmp_path / name).exists() for name in ("t2", "t3", "t4"))


@pytest.mark.parametrize("flag", ["--rows", "--tokens"])
def test_counts_below_one_are_refused(tmp_path, flag):
    assert draft_text.main([str(tmp_path / "run"), str(tmp_path / "out"), flag, "0"]) == 2
    assert not (tmp_path / "out").exists()
