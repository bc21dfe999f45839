"""How many threads CPU training uses, chosen from the CPU it actually gets.

torch runs each op's parallel region on all its threads and waits at the end for the slowest.
Beside another busy process, one of those threads is often descheduled, and every region then
waits for it (a scheduler time slice, milliseconds, many times per step), so training slows far
more than its fair share of the CPU would say. Fewer threads than cores avoids that wait. So the
trainer starts with as many threads as cores were idle just before (sampled from /proc/stat), and
every minute times a couple of steps with the other count (all cores, or the idle ones / one) and
keeps whichever was faster; the CLI also makes waiting OpenMP threads sleep rather than spin
(OMP_WAIT_POLICY=PASSIVE, decoderlm.cli). train.threads=N, or OMP_NUM_THREADS (torchrun sets it),
fixes the count instead; so does bit-exact resume need it (reductions split by thread).
Hand-written: no library adapts intra-op threads to contention.
"""

from __future__ import annotations

import os
import statistics
import time

import torch

RECHECK_EVERY_S = 60.0
TRIAL_STEPS = 2
KEEP_IF_FASTER = 0.95  # a trial count must be 5% faster to be kept (step times are noisy)


def idle_cores(sample_s: float = 0.3) -> float | None:
    """Cores idle over the next `sample_s` seconds (/proc/stat; None where there is none)."""
    def read():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return values[3] + values[4], sum(values)  # idle + iowait, total (jiffies over all cores)
    try:
        idle0, total0 = read()
        time.sleep(sample_s)
        idle1, total1 = read()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (os.cpu_count() or 1) * (idle1 - idle0) / (total1 - total0)


class ThreadTuner:
    """Call `after_step(seconds)` after each training step; it changes torch's thread count."""

    def __init__(self, cores: int, idle: float | None):
        self.cores = cores  # torch's count before (the trainer sets it back when the run ends)
        free = max(1, min(cores, round(idle))) if idle is not None else cores
        self.other = cores if free != cores else max(1, cores // 2)
        self.current = free
        torch.set_num_threads(self.current)
        self.recent: list[float] = []  # the latest step times at the current count
        self.trial: list[float] = []  # step times at the other count, while trialling it
        self.trialling = False
        self.next_check = time.monotonic() + RECHECK_EVERY_S

    @classmethod
    def for_cpu_training(cls, threads: int | None) -> "ThreadTuner | None":
        """None where the thread count is the user's (train.threads, or OMP_NUM_THREADS as torchrun
        sets it) or there is one core."""
        if threads is not None:
            torch.set_num_threads(threads)
            return None
        cores = torch.get_num_threads()
        if "OMP_NUM_THREADS" in os.environ or cores < 2:
            return None
        return cls(cores, idle_cores())

    def after_step(self, seconds: float) -> None:
        if self.trialling:
            self.trial.append(seconds)
            if len(self.trial) >= TRIAL_STEPS:
                self._decide()
            return
        self.recent = (self.recent + [seconds])[-3:]
        if time.monotonic() >= self.next_check and len(self.recent) == 3:
            self.trialling = True
            torch.set_num_threads(self.other)

    def _decide(self) -> None:
        if statistics.median(self.trial) < KEEP_IF_FASTER * statistics.median(self.recent):
            self.current, self.other = self.other, self.current
        torch.set_num_threads(self.current)
        self.trial, self.recent, self.trialling = [], [], False
        self.next_check = time.monotonic() + RECHECK_EVERY_S
