"""Learning-rate schedules as pure functions of the step.

A pure function (instead of a torch LR scheduler object) means the schedule's whole state is the
step number, which the checkpoint already holds, so resume cannot drift. The factor returned
multiplies each parameter group's own base learning rate (Muon and AdamW groups differ).
"""

from __future__ import annotations

import math

from decoderlm.config import TrainConfig
from decoderlm.errors import DecoderLMError

SCHEDULES = ("cosine", "constant", "wsd")


def lr_factor(step: int, config: TrainConfig, total_steps: int) -> float:
    """Multiplier of the base lr for optimizer step `step` (0-based) of `total_steps`.

    cosine:   linear warm-up from `warmup_start_factor` to 1 over `warmup_steps`, then cosine
              annealing to `min_lr / lr` at the last step (torch LinearLR + CosineAnnealingLR).
    constant: the same warm-up, then 1.
    wsd:      warm-up, stable at 1, then a linear decay to `min_lr / lr` over the last
              `decay_fraction` of the steps (warmup-stable-decay).
    """
    if config.schedule not in SCHEDULES:
        raise DecoderLMError(f"train.schedule must be one of {SCHEDULES}, got {config.schedule!r}")
    warmup = max(0, config.warmup_steps)
    if step < warmup:
        start = config.warmup_start_factor
        return start + (1.0 - start) * step / warmup
    if config.schedule == "constant":
        return 1.0
    floor = config.min_lr / config.lr if config.lr > 0 else 0.0
    total = max(total_steps, warmup + 1)
    if config.schedule == "cosine":
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    decay_steps = max(1, round(config.decay_fraction * (total - warmup)))
    decay_start = total - decay_steps
    if step < decay_start:
        return 1.0
    return 1.0 - (1.0 - floor) * min(1.0, (step - decay_start) / decay_steps)


def horizon(step: int, total_steps: int, time_fraction: float) -> int:
    """The number of steps the schedule should plan for.

    With a wall-clock budget the run may end long before `total_steps`; projecting the end from
    the fraction of the budget already used (step / fraction) lets the decay finish when the
    budget does, instead of leaving the lr high at the cut-off.
    """
    if time_fraction <= 0.0 or step <= 0:
        return total_steps
    return max(step + 1, min(total_steps, int(step / min(1.0, time_fraction))))


def parse_duration(text: str | None) -> float | None:
    """'90s', '10m', '1.5h', '2d' or plain seconds -> seconds (None stays None)."""
    if text is None or text == "":
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    raw = str(text).strip().lower()
    scale = units.get(raw[-1:], None)
    number = raw[:-1] if scale else raw
    try:
        seconds = float(number) * (scale or 1)
    except ValueError:
        raise DecoderLMError(f"train.time_budget {text!r} is not a duration; use e.g. 90s, 10m or 1h") from None
    if seconds <= 0:
        raise DecoderLMError(f"train.time_budget must be positive, got {text!r}")
    return seconds
