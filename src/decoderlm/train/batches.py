"""How one global batch becomes this process's micro-batches.

Every process draws the same global batch (the samplers run with the same seed everywhere) and
takes its own slice of rows, which it splits into `accum` micro-batches. So the union of all
processes' micro-batches is exactly the batch a single process would use: results do not depend
on the number of processes, and the sampler state is the same on every rank (rank 0 saves it).
Reading the other ranks' rows from the memmap costs nothing next to the forward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class MicroBatch:
    x: torch.Tensor  # (b, T)
    y: torch.Tensor  # (b, T)
    weight: float  # multiplies this micro-batch's mean loss (0 for a placeholder)
    rows: int  # real rows (0 for a placeholder)
    extras: dict | None = None  # positions / attention_mask of packed chat rows, split like x

    def model_kwargs(self, device) -> dict:
        return {k: v.to(device) for k, v in (self.extras or {}).items()}


def accumulation_steps(batch_size: int, micro_batch_size: int | None, world_size: int) -> int:
    per_rank = math.ceil(batch_size / world_size)
    return max(1, math.ceil(per_rank / (micro_batch_size or per_rank)))


def micro_batches(x: torch.Tensor, y: torch.Tensor, rank: int, world_size: int, accum: int,
                  extras: dict | None = None) -> list[MicroBatch]:
    """This rank's `accum` micro-batches of the global batch (B, T).

    The weights make sum(weight * mean loss) over micro-batches, averaged over ranks (which is
    what DDP/FSDP do to gradients), equal the mean loss over the whole global batch, also when the
    rows do not divide evenly. A rank left without rows (a short last batch) still runs one
    placeholder row with weight 0, so every rank joins the same collectives.
    """
    total = x.shape[0]
    extras = {k: v for k, v in (extras or {}).items() if v is not None}

    def pieces(t):
        return t.tensor_split(world_size)[rank].tensor_split(accum)

    split_extras = [dict(zip(extras, parts)) for parts in zip(*map(pieces, extras.values()))] or [None] * accum
    out = []
    for xs, ys, ex in zip(pieces(x), pieces(y), split_extras):
        rows = xs.shape[0]
        if rows == 0:
            out.append(MicroBatch(x[:1], y[:1], 0.0, 0, {k: v[:1] for k, v in extras.items()} or None))
        else:
            out.append(MicroBatch(xs, ys, rows / total * world_size, rows, ex or None))
    return out

