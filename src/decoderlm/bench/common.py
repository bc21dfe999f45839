"""Timing, peak-FLOP measurement and table helpers shared by the benchmark suites."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def alternate(runs: dict[str, Callable[[], object]], *, warmup: int = 2, repeats: int = 5) -> dict[str, list[float]]:
    """Time each callable `repeats` times, interleaving them (A, B, A, B, ...) so a slow patch of the
    machine hits every contender alike. Returns seconds per run."""
    for fn in runs.values():
        for _ in range(warmup):
            fn()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def median(values: list[float]) -> float:
    return statistics.median(values)


_PEAKS: dict[torch.dtype, float] = {}


def matmul_peak(dtype: torch.dtype = torch.bfloat16, n: int = 4096, repeats: int = 10) -> float:
    """The best FLOP/s of a square matmul in `dtype` on this CPU, measured once per process: the
    ceiling against which MFU is reported. Best of several large products, since a shared virtual
    machine's speed wanders between runs."""
    if dtype not in _PEAKS:  # a smaller `n` (quick runs) measures a lower, rougher peak
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b  # warm-up (kernel selection, page faults)
        best = min(_timed(lambda: a @ b) for _ in range(repeats))
        _PEAKS[dtype] = 2 * n**3 / best
    return _PEAKS[dtype]


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def cell(value):
        if isinstance(value, float):
            return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


