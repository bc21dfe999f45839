"""Validation loss during training: the same windows every time (a fresh sampler with a fixed seed)
so that evaluations compare, stopped early before a batch that would end past a deadline; chat
fine-tunes evaluate their whole held-out set. Functions of the Trainer (train/loop.py)."""

from __future__ import annotations

import time

import torch

from decoderlm.data.samplers import RandomWindows
from decoderlm.train import distributed, finetune
from decoderlm.train.batches import micro_batches
from decoderlm.train.device import autocast
from decoderlm.train.metrics import progress_bar


def evaluate(trainer, deadline: float | None = None) -> tuple[float | None, int]:
    """(mean validation loss, batches used) over `eval_batches` global batches, the same windows
    every time (a fresh sampler with a fixed seed), so evaluations are comparable. With a
    `deadline` (time.perf_counter), it stops before a batch that would end past it: a shrunk
    evaluation (its first batches), or none at all (None, 0)."""
    cfg, main = trainer.cfg, trainer.dist.is_main
    if trainer.chat:  # held-out chat sets are small: always evaluated whole
        return _evaluate_chat(trainer), cfg.eval_batches
    sampler = RandomWindows(trainer.data.val, trainer.block, cfg.batch_size, seed=cfg.seed)
    sums = torch.zeros(2, dtype=torch.float64, device=trainer.device)  # (loss * rows, rows)
    bar = progress_bar(cfg.eval_batches, 0, trainer.progress and main, desc="evaluating", unit="batch", leave=False)
    done = 0
    trainer.wrapped.eval()
    try:
        for done in range(cfg.eval_batches):
            late = deadline is not None and time.perf_counter() + trainer.clock.eval_batch_estimate() > deadline
            if distributed.broadcast_flag(late, trainer.dist):  # every rank evaluates the same batches
                break
            with trainer.clock.timing("eval_batch"):
                sums += _eval_batch(trainer, sampler)
            bar.update(1)
        else:
            done = cfg.eval_batches
    finally:
        trainer.wrapped.train()
        bar.close()
    sums = distributed.all_reduce_sum(sums, trainer.dist)
    return (float(sums[0] / sums[1]) if done else None), done


@torch.no_grad()
def _evaluate_chat(trainer) -> float:
    def loss_of(x, y, **extras):
        with autocast(trainer.device, trainer.autocast_dtype):
            return trainer.cross_entropy(trainer.compute_model(x, y, **extras))

    trainer.wrapped.eval()
    try:
        return finetune.evaluate_chat(loss_of, trainer.chat_batches(trainer.data.val), trainer.device)
    finally:
        trainer.wrapped.train()


def _eval_batch(trainer, sampler) -> torch.Tensor:
    sums = torch.zeros(2, dtype=torch.float64, device=trainer.device)
    x, y = sampler.next_batch()
    for mb in micro_batches(x, y, trainer.dist.rank, trainer.dist.world_size, trainer.accum):
        with autocast(trainer.device, trainer.autocast_dtype):
            ce = trainer.cross_entropy(trainer.wrapped(mb.x.to(trainer.device), mb.y.to(trainer.device)))
        sums += torch.stack([ce.double() * mb.rows, torch.tensor(mb.rows, device=trainer.device).double()])
    return sums
