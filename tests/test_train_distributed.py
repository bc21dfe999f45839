"""torchrun with 2 gloo processes (DDP and FSDP2) gives the weights of one process with the same
global batch; gradient accumulation gives the weights of one big batch."""

from __future__ import annotations

import os
import subprocess

import pytest
import torch

from decoderlm.data.shards import TokenData
from test_train_support import PYTHON, char_data, run_cli, tiny_sets, weights  # noqa: F401


def _sets(data_dir, **extra):
    vocab = TokenData.open(data_dir).meta["vocab_size"]
    return tiny_sets(model__vocab_size=vocab, model__dropout=0.0, train__batch_size=8, train__max_steps=4,
                     train__eval_every=2, train__eval_batches=1, **extra)


def _assert_close(a, b, atol=1e-5):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.allclose(wa[name], wb[name], atol=atol, rtol=0), (name, (wa[name] - wb[name]).abs().max())


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, char_data):
    run = tmp_path_factory.mktemp("single") / "run"
    assert run_cli(["train", "--data", char_data, "--out", run, "--no-progress", "--no-samples", *_sets(char_data)])[0] == 0
    return run


def _torchrun(args, timeout=180):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "decoderlm", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_gloo_processes_match_one_process(tmp_path, char_data, single_run, parallel):
    """Also through a checkpoint: stop at step 2, resume to 4 (the optimizer state is saved from,
    and loaded back into, the 2-process (sharded) model)."""
    run = tmp_path / parallel
    result = _torchrun(["train", "--data", char_data, "--out", run, "--no-progress", "--no-samples",
                        "--stop-at-step", "2", *_sets(char_data, train__parallel=parallel)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("training shakespeare on") == 1  # only rank 0 reports
    result = _torchrun(["train", "--out", run, "--resume", "--no-progress", "--no-samples"])
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_close(single_run / "checkpoints/last/model.safetensors", run / "checkpoints/last/model.safetensors")
    state = torch.load(run / "checkpoints/last/train_state.pt", weights_only=True)
    assert state["world_size"] == 2 and state["step"] == 4
    val = [line for line in (run / "metrics.jsonl").read_text().splitlines() if "val_loss" in line]
    assert len(val) == 2  # rank 0 alone wrote the log


def test_gradient_accumulation_matches_one_big_batch(tmp_path, char_data, single_run):
    run = tmp_path / "accum"
    args = ["train", "--data", char_data, "--out", run, "--no-progress", "--no-samples",
            *_sets(char_data, train__micro_batch_size=3)]  # 8 rows as micro-batches of 3, 3 and 2
    assert run_cli(args)[0] == 0
    _assert_close(single_run / "checkpoints/last/model.safetensors", run / "checkpoints/last/model.safetensors")
