"""The run's clock against `train.time_budget`: the budget bounds the whole of `fit()` (the first
step's compile, training, evaluations, checkpoints) and the samples printed after it, so the loop
stops training early enough to leave room for the final evaluation, checkpoint and samples, and
those shrink (or are skipped) to fit what is left.

Estimates come from what this run measured: the latest step, the latest save (before any, the
bytes to write at a conservative rate) and evaluation batches (before any, a third of a step:
forward only). A budget spent before a resume counts too (`spent_before`).
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time

SAVE_BYTES_PER_S = 200e6  # a cautious disk rate for the first checkpoint's estimate
FINAL_EVAL_SHARE = 0.10  # at most this part of the budget is held back for the final evaluation
SAMPLES_SHARE = 0.05  # and this part for the samples printed at the end


class RunClock:
    def __init__(self, budget: float | None, spent_before: float, checkpoint_bytes: int):
        self.budget = budget
        self.start = time.perf_counter()
        self.spent_before = spent_before
        self.steps: list[float] = []  # durations; the first (it compiles) is dropped once others come
        self.save_s = checkpoint_bytes / SAVE_BYTES_PER_S
        self.eval_batch_s: float | None = None
        self.plot_s = 0.5  # the loss plot after fit() (matplotlib), until measured

    @property
    def step_s(self) -> float | None:
        """A typical step: the median of the latest five (robust to a slow one on a busy machine)."""
        recent = self.steps[1:][-5:] or self.steps
        return statistics.median(recent) if recent else None

    def elapsed(self) -> float:
        return self.spent_before + time.perf_counter() - self.start

    def left(self) -> float:
        return math.inf if self.budget is None else self.budget - self.elapsed()

    def end(self) -> float | None:
        """The perf_counter time at which the budget runs out (None: no budget)."""
        return None if self.budget is None else self.start + self.budget - self.spent_before

    @contextlib.contextmanager
    def timing(self, what: str):
        """Record how long a step, a save or one evaluation batch took (for the estimates)."""
        began = time.perf_counter()
        yield
        took = time.perf_counter() - began
        if what == "step":
            self.steps.append(took)
        else:
            setattr(self, f"{what}_s", took)

    def eval_batch_estimate(self) -> float:
        return self.eval_batch_s if self.eval_batch_s is not None else (self.step_s or 0.0) / 3

    def samples_share(self, samples: bool) -> float:
        return SAMPLES_SHARE * self.budget if samples and self.budget else 0.0

    def final_reserve(self, eval_batches: int, samples: bool) -> float:
        """Seconds to keep for what follows the last step: evaluation, checkpoint, samples."""
        if self.budget is None:
            return 0.0
        evaluation = min(eval_batches * self.eval_batch_estimate(), FINAL_EVAL_SHARE * self.budget)
        return self.save_s + self.plot_s + evaluation + self.samples_share(samples)

    def steps_that_fit(self, eval_batches: int, samples: bool) -> int:
        """How many more steps fit in the budget before what must follow them (a large number
        before the first step is timed, or without a budget)."""
        if self.budget is None or not self.step_s:
            return 1 << 62
        room = self.left() - self.final_reserve(eval_batches, samples)
        if len(self.steps) == 1:  # only the first step, which compiled: time a second one if it may fit
            return 1 if room > 0 else 0
        return max(0, math.floor(room / self.step_s))

    def eval_deadline(self, samples: bool) -> float | None:
        """Until when (perf_counter) an evaluation may run, leaving the checkpoint and samples their time."""
        end = self.end()
        return None if end is None else end - self.save_s - self.plot_s - self.samples_share(samples)
