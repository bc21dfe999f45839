"""CPU training's thread count follows the CPU it gets: a trial of the other count is kept only
when faster; the CLI makes waiting OpenMP threads sleep (set before torch loads)."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from decoderlm.train import threads
from decoderlm.train.threads import ThreadTuner, idle_cores


def _steps(tuner, seconds, n):
    for _ in range(n):
        tuner.after_step(seconds)


def test_tuner_keeps_the_faster_thread_count(monkeypatch):
    before = torch.get_num_threads()
    clock = [0.0]
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock[0])
    try:
        tuner = ThreadTuner(cores=2, idle=0.4)  # one core busy at the start: one thread
        assert tuner.current == 1 and torch.get_num_threads() == 1 and tuner.other == 2
        _steps(tuner, 1.0, 3)
        assert torch.get_num_threads() == 1  # not yet time to re-check
        clock[0] += threads.RECHECK_EVERY_S
        _steps(tuner, 1.0, 1)
        assert tuner.trialling and torch.get_num_threads() == 2
        _steps(tuner, 0.6, threads.TRIAL_STEPS)  # two threads are faster now: kept
        assert tuner.current == 2 and torch.get_num_threads() == 2 and not tuner.trialling
        clock[0] += threads.RECHECK_EVERY_S
        _steps(tuner, 0.6, 3)
        assert torch.get_num_threads() == 1
        _steps(tuner, 0.59, threads.TRIAL_STEPS)  # one thread is not clearly faster: back to two
        assert tuner.current == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_fixed_threads_and_idle_sampling():
    before = torch.get_num_threads()
    try:
        assert ThreadTuner.for_cpu_training(1) is None and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    idle = idle_cores(0.05)
    assert idle is None or 0.0 <= idle <= os.cpu_count() + 1e-6


def test_cli_sets_passive_waiting_before_torch_loads():
    code = "import os, sys; import decoderlm.cli; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}).stdout
    assert out.split() == ["PASSIVE", "False"]
