"""`decoderlm train` end to end: the toy preset through the CLI, and bad input (one line, exit 2,
nothing overwritten)."""

from __future__ import annotations

import os

import pytest
import torch

import decoderlm
from decoderlm.data.shards import TokenData
from decoderlm.generate import generate
from test_train_support import char_data, run_cli, tiny_sets, tree_snapshot  # noqa: F401

PROMPTS = ("what is statquest <EOS>", "statquest is what <EOS>")


def test_toy_trains_via_cli_and_generates_awesome(tmp_path, capsys):
    run = tmp_path / "toy"
    code, out, err = run_cli(["train", "--preset", "toy", "--out", run, "--no-progress"], capsys)
    assert code == 0, err
    assert "stopped at step 60" in out
    for prompt in PROMPTS:  # the samples printed at the end (greedy, from the run directory)
        assert f"\n{prompt} awesome <EOS>\n" in out
    lm = decoderlm.load(run)  # what `decoderlm generate RUN_DIR` loads
    for prompt in PROMPTS:
        ids = torch.tensor([lm.tokenizer.encode(prompt)])
        new = generate(lm.model, ids, 2, temperature=0.0)[0, ids.shape[1]:]
        assert lm.tokenizer.decode(new.tolist()) == "awesome <EOS>"
    for name in ("config.json", "model.safetensors", "metrics.jsonl", "loss.png", "checkpoints/last/train_state.pt"):
        assert (run / name).is_file(), name


def _one_line_error(capsys, args, expect: str):
    code, out, err = run_cli(args, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("decoderlm: error: "), err
    assert expect in err, err
    assert "Traceback" not in err
    return err


def test_missing_data(tmp_path, capsys):
    run = tmp_path / "run"
    _one_line_error(capsys, ["train", "--data", tmp_path / "no-such-dir", "--out", run, *tiny_sets()], "no-such-dir")
    assert not run.exists() and list(tmp_path.iterdir()) == []  # nothing created, no temp left behind


def test_vocab_mismatch_between_data_and_preset(tmp_path, capsys, char_data):
    run = tmp_path / "run"
    _one_line_error(capsys, ["train", "--preset", "shakespeare", "--data", char_data, "--out", run],
                    "vocabulary")
    assert not run.exists()
    # prepared on the fly with the toy tokenizer (5 tokens) for a model asked to have 7
    _one_line_error(capsys, ["train", "--preset", "toy", "--out", run, "--set", "model.vocab_size=7"], "vocabulary")
    assert list(tmp_path.iterdir()) == []  # neither the run nor the staged data is left


def test_unknown_set_key(tmp_path, capsys):
    _one_line_error(capsys, ["train", "--preset", "toy", "--out", tmp_path / "r", "--set", "train.lrr=1"], "lrr")
    _one_line_error(capsys, ["train", "--preset", "toy", "--out", tmp_path / "r", "--set", "model.n_layer=two"],
                    "n_layer")
    assert not (tmp_path / "r").exists()


def test_non_writable_output_dir(tmp_path, capsys):
    if os.geteuid() == 0:  # root ignores permission bits; /sys refuses new entries even to root
        target = "/sys/decoderlm-test-run"
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        target = locked / "run"
    _one_line_error(capsys, ["train", "--preset", "toy", "--out", target], "cannot write")


def test_existing_run_is_never_overwritten_and_corrupt_checkpoint_refused(tmp_path, capsys, char_data):
    run = tmp_path / "run"
    vocab = TokenData.open(char_data).meta["vocab_size"]
    sets = tiny_sets(model__vocab_size=vocab, train__max_steps=4, train__eval_every=2)
    assert run_cli(["train", "--data", char_data, "--out", run, "--no-progress", "--no-samples", *sets])[0] == 0
    capsys.readouterr()

    before = tree_snapshot(run)
    _one_line_error(capsys, ["train", "--data", char_data, "--out", run, *sets], "--resume")
    assert tree_snapshot(run) == before

    state = run / "checkpoints/last/train_state.pt"
    state.write_bytes(state.read_bytes()[: len(state.read_bytes()) // 2])  # truncated by a full disk, say
    before = tree_snapshot(run)
    _one_line_error(capsys, ["train", "--out", run, "--resume", "--set", "train.max_steps=8"], "train_state.pt")
    assert tree_snapshot(run) == before

    weights = run / "checkpoints/last/model.safetensors"
    weights.write_bytes(b"\0" * 100)
    before = tree_snapshot(run)
    _one_line_error(capsys, ["train", "--out", run, "--resume"], "model.safetensors")
    assert tree_snapshot(run) == before

    _one_line_error(capsys, ["train", "--out", tmp_path / "nothing-here", "--resume"], "not a run directory")
    _one_line_error(capsys, ["train", "--out", run, "--resume", "--set", "model.n_layer=3"], "model.n_layer")


def test_overwrite_replaces_only_run_directories(tmp_path, capsys, char_data):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    _one_line_error(capsys, ["train", "--preset", "toy", "--out", precious, "--overwrite"], "not a decoderlm run")
    assert (precious / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("bad", ["train.max_steps=1.5", "train.schedule=linear", "train.optimizer=sgd",
                                 "train.time_budget=soon", "train.block_size=999", "train.dtype=fp8"])
def test_bad_setting_values(tmp_path, capsys, bad, char_data):
    vocab = TokenData.open(char_data).meta["vocab_size"]
    _one_line_error(capsys, ["train", "--data", char_data, "--out", tmp_path / "r", "--no-progress",
                             *tiny_sets(model__vocab_size=vocab), "--set", bad], bad.split("=")[0].split(".")[1])
    assert not (tmp_path / "r").exists()


def test_data_too_short_for_the_context_leaves_nothing(tmp_path, capsys):
    text = tmp_path / "short.txt"
    text.write_text("a short text.\n" * 3)
    run = tmp_path / "run"
    _one_line_error(capsys, ["train", "--data", text, "--out", run, "--no-progress",
                             *tiny_sets(model__max_seq_len=64)], "block_size")
    assert not run.exists()
