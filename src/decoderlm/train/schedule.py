"""Learning-rate schedules as pure functions of the step.

A pure function (instead of a torch LR scheduler object) means the schedule's whole state is the
step number, which the checkpoint already holds, so resume cannot drift. The factor returned
multiplies each parameter group's own base learning rate (Muon and AdamW groups differ).
"""

from __future__ import annotations

import math

from decoderlm.config import TrainConfig


def lr_factor(step: int, config: TrainConfig, total_steps: int) -> float:
    """Multiplier of the base lr for optimizer step `step` (0-based) of `total_steps`.

    cosine:   linear warm-up from `warmup_start_factor` to 1 over `warmup_steps`, then cosine
              annealing to `min_lr / lr` at the last step (torch LinearLR + CosineAnnealingLR).
    constant: the same warm-up, then 1.
    wsd:      warm-up, stable at 1, then a linear decay to `min_lr / lr` over the last
              `decay_fraction` of the steps (warmup-stable-decay).
    """
    warmup = config.warmup_steps
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
