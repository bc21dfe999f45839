"""Exact resume (stop at 20, resume to 40 == 40 straight, bit for bit on CPU), a kill -9 in the
middle of a checkpoint save that the next run resumes from, and Ctrl-C saving a checkpoint."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import torch

from decoderlm.data.shards import TokenData
from decoderlm.rundir import RunDirectory
from test_train_support import (assert_same_weights, char_data, run_cli, run_subprocess, start_patched_cli,  # noqa: F401
                                tiny_sets)

# In the child: a checkpoint that replaces an existing one waits, fully written in its staged
# directory, just before the swap, so the test can kill -9 it at exactly that moment.
PAUSE_BEFORE_SWAP = """
import time
from decoderlm import fileio
swap = fileio.replace_dir
def paused(staged, target):
    if target.name == "last" and target.exists():
        time.sleep(60)
    swap(staged, target)
fileio.replace_dir = paused
"""


def _sets(data_dir, **extra):
    vocab = TokenData.open(data_dir).meta["vocab_size"]
    return tiny_sets(model__vocab_size=vocab, **extra)


def _losses(run_dir, key="loss"):
    return {r["step"]: r[key] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if r.get(key) is not None}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])  # bf16 on CPU: a bf16 model with fp32 master weights
def test_resume_is_bit_exact(tmp_path, char_data, dtype):
    common = ["train", "--data", char_data, "--no-progress", "--no-samples", *_sets(char_data, train__dtype=dtype)]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run_cli([*common, "--out", straight])[0] == 0
    assert run_cli([*common, "--out", split, "--stop-at-step", "20"])[0] == 0
    state = torch.load(split / "checkpoints/last/train_state.pt", weights_only=True)
    assert state["step"] == 20
    assert run_cli(["train", "--out", split, "--resume", "--no-progress", "--no-samples"])[0] == 0

    a, b = _losses(straight), _losses(split)
    assert sorted(a) == list(range(1, 41)) and a == b  # every step's loss, exactly
    assert _losses(straight, "val_loss") == _losses(split, "val_loss")
    assert _losses(straight, "lr") == _losses(split, "lr")
    assert a[40] < a[1]  # it did learn something
    assert_same_weights(straight / "checkpoints/last/model.safetensors", split / "checkpoints/last/model.safetensors")
    assert_same_weights(straight / "model.safetensors", split / "model.safetensors")
    assert_same_weights(straight / "checkpoints/best/model.safetensors", split / "checkpoints/best/model.safetensors")


def test_kill9_during_save_then_resume(tmp_path, char_data):
    """The checkpoint writer pauses (patched in the child) after writing its temp directory and
    before the swap; the process is killed there. `last` must still be the previous complete checkpoint, and
    resuming from it must end with the same weights as a run that was never interrupted."""
    sets = _sets(char_data, train__max_steps=20, train__save_every=5, train__eval_every=0)
    common = ["train", "--data", char_data, "--no-progress", "--no-samples", *sets]
    reference = tmp_path / "reference"
    assert run_cli([*common, "--out", reference])[0] == 0

    run = tmp_path / "killed"
    proc = start_patched_cli(PAUSE_BEFORE_SWAP, [*common, "--out", run])
    try:
        deadline = time.time() + 90
        while time.time() < deadline:  # the 2nd save (step 10) is paused with its temp dir complete
            temps = list((run / "checkpoints").glob(".last.tmp-*")) if (run / "checkpoints").is_dir() else []
            if temps and (run / "checkpoints/last/train_state.pt").is_file() and \
                    (temps[0] / "train_state.pt").is_file():
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.1)
        else:
            raise AssertionError("the checkpoint save never reached its pause")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()

    weights, state, where = RunDirectory(run).load_last()  # loadable, and still the step-5 checkpoint
    assert where.name == "last" and state["step"] == 5
    result = run_subprocess(["train", "--out", run, "--resume", "--no-progress", "--no-samples"])
    assert result.returncode == 0, result.stderr
    assert not list((run / "checkpoints").glob(".last*"))  # the stale temp dir was cleaned up
    assert torch.load(run / "checkpoints/last/train_state.pt", weights_only=True)["step"] == 20
    assert_same_weights(reference / "checkpoints/last/model.safetensors", run / "checkpoints/last/model.safetensors")


def test_interrupted_swap_falls_back_to_previous(tmp_path, char_data):
    """A kill between the two renames of the swap leaves only `.last.old`: it is found and used,
    and the next save restores a normal `last`."""
    run = tmp_path / "run"
    sets = _sets(char_data, train__max_steps=6, train__save_every=3, train__eval_every=0)
    assert run_cli(["train", "--data", char_data, "--out", run, "--no-progress", "--no-samples", *sets])[0] == 0
    last = run / "checkpoints/last"
    last.rename(run / "checkpoints/.last.old")
    assert RunDirectory(run).last_checkpoint().name == ".last.old"
    assert run_cli(["train", "--out", run, "--resume", "--no-progress", "--no-samples",
                    "--set", "train.max_steps=9"])[0] == 0
    assert last.is_dir() and not (run / "checkpoints/.last.old").exists()
    assert torch.load(last / "train_state.pt", weights_only=True)["step"] == 9


def test_resume_with_larger_max_steps_extends_an_epochs_run(tmp_path, capsys):
    """The toy preset's length is 30 epochs (60 steps): `--resume --set train.max_steps=80` runs on
    to step 80, saying that max_steps replaced epochs; a length before the saved step is refused."""
    run = tmp_path / "toy"
    assert run_cli(["train", "--preset", "toy", "--out", run, "--no-progress", "--no-samples"], capsys)[0] == 0
    code, out, err = run_cli(["train", "--out", run, "--resume", "--no-progress", "--no-samples",
                              "--set", "train.max_steps=80"], capsys)
    assert code == 0, err
    assert "train.max_steps=80 replaces the run's train.epochs=30" in out
    assert "stopped at step 80" in out
    assert torch.load(run / "checkpoints/last/train_state.pt", weights_only=True)["step"] == 80
    assert json.loads((run / "config.json").read_text())["train"]["epochs"] is None  # the next resume agrees
    code, out, err = run_cli(["train", "--out", run, "--resume", "--no-progress", "--no-samples",
                              "--set", "train.max_steps=70"], capsys)
    assert code == 2 and err.count("\n") == 1 and "is at step 80" in err, err
