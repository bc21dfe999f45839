"""Timing and table helpers shared by the benchmark suites (the matmul peak: decoderlm.train.mfu)."""

from __future__ import annotations

import statistics
import time
from typing import Callable


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


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def cell(value):
        if isinstance(value, float):
            return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


