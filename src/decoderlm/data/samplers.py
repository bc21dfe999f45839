"""Training batches from a 1-D token array: random windows (nanoGPT) or every window, epoch by epoch
(the mini-course's GutenbergDataset). Both are deterministic given a seed and can save and restore
their position exactly (`state_dict` holds only tensors and ints: fine for `weights_only` loading).

Several processes (DDP ranks) share one *global* batch per step: every rank computes the same
global batch of `batch_size * world_size` windows and keeps its own contiguous part (the split of
`torch.tensor_split(world_size)`). So ranks with `batch_size=B // W` together see, step for step,
exactly the windows a single process with `batch_size=B` sees, and a run can be resumed with another
world size as long as the global batch stays the same.
"""

from __future__ import annotations

import numpy as np
import torch

from decoderlm.errors import DecoderLMError


def _check(tokens, block_size: int, batch_size: int, rank: int, world_size: int):
    if block_size <= 0 or batch_size <= 0:
        raise DecoderLMError(f"block_size and batch_size must be positive (got {block_size}, {batch_size})")
    if not 0 <= rank < world_size:
        raise DecoderLMError(f"rank {rank} is outside world_size {world_size}")
    if len(tokens) < block_size + 1:
        raise DecoderLMError(
            f"this data split has {len(tokens)} tokens, fewer than block_size + 1 = {block_size + 1}: "
            "use a shorter context, more text, or a larger validation fraction"
        )


def rank_part(global_offsets, rank: int, world_size: int):
    """This rank's contiguous part of a global batch, split as `torch.tensor_split` splits rows."""
    return np.array_split(np.asarray(global_offsets), world_size)[rank]


def _windows(tokens, offsets, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) LongTensors (B, T): y is x shifted left by one token. B may be 0 (see rank_part)."""
    rows = [np.asarray(tokens[o : o + block_size + 1]) for o in offsets]
    both = torch.from_numpy(np.stack(rows).astype(np.int64) if rows else np.zeros((0, block_size + 1), np.int64))
    return both[:, :-1].contiguous(), both[:, 1:].contiguous()


class RandomWindows:
    """Uniformly random windows, as nanoGPT's get_batch. All ranks draw the same global batch from
    `seed` and each keeps its part, so the ranks together match one process with the global batch."""

    def __init__(self, tokens, block_size: int, batch_size: int, seed: int = 1337, *, rank: int = 0, world_size: int = 1):
        _check(tokens, block_size, batch_size, rank, world_size)
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        self.rank, self.world_size = rank, world_size
        self.global_batch_size = batch_size * world_size
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.batches = 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        high = len(self.tokens) - self.block_size  # last start whose target still fits
        offsets = torch.randint(high, (self.global_batch_size,), generator=self.generator).numpy()
        self.batches += 1
        return _windows(self.tokens, rank_part(offsets, self.rank, self.world_size).tolist(), self.block_size)

    def state_dict(self) -> dict:
        return {"kind": "random", "seed": self.seed, "batches": self.batches, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "random":
            raise DecoderLMError(f"cannot resume random windows from a {state.get('kind')!r} sampler state")
        self.seed, self.batches = int(state["seed"]), int(state["batches"])
        self.generator.set_state(state["generator"])


class SequentialWindows:
    """Every window starting at 0, stride, 2*stride, ... once per epoch, shuffled per epoch if asked.

    `epoch` counts completed passes; `position` is the next step's index within the current pass;
    `batches_per_epoch` is the number of steps per pass, the same on every rank. Each step takes the
    next `global_batch_size` windows of the pass (the order depends on seed and epoch only, so it
    is the same on every rank) and this rank keeps its part. The last step of a pass may be short;
    when it holds fewer windows than there are ranks, some ranks get an empty (0, T) batch.
    """

    def __init__(self, tokens, block_size: int, batch_size: int, stride: int | None = None, shuffle: bool = True,
                 seed: int = 1337, *, rank: int = 0, world_size: int = 1):
        _check(tokens, block_size, batch_size, rank, world_size)
        self.stride = stride or block_size
        if self.stride <= 0:
            raise DecoderLMError(f"stride must be positive, got {stride}")
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self.global_batch_size = batch_size * world_size
        self.n_windows = (len(tokens) - block_size - 1) // self.stride + 1
        self.batches_per_epoch = -(-self.n_windows // self.global_batch_size)
        self.epoch = 0
        self.position = 0
        self._order_epoch, self._order = -1, None

    def _epoch_order(self) -> np.ndarray:
        if self._order_epoch != self.epoch:
            if self.shuffle:  # the same permutation on every rank: it depends on seed and epoch only
                self._order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n_windows)
            else:
                self._order = np.arange(self.n_windows)
            self._order_epoch = self.epoch
        return self._order

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.position * self.global_batch_size
        windows = self._epoch_order()[start : start + self.global_batch_size]
        self.position += 1
        if self.position == self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        mine = rank_part(windows, self.rank, self.world_size)
        return _windows(self.tokens, (mine * self.stride).tolist(), self.block_size)

    def state_dict(self) -> dict:
        return {"kind": "sequential", "epoch": self.epoch, "position": self.position, "seed": self.seed,
                "n_windows": self.n_windows, "global_batch_size": self.global_batch_size}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "sequential":
            raise DecoderLMError(f"cannot resume sequential windows from a {state.get('kind')!r} sampler state")
        if int(state["n_windows"]) != self.n_windows:
            raise DecoderLMError(f"the data changed since this state was saved ({state['n_windows']} windows, "
                                 f"now {self.n_windows}): resume with the same data directory and context")
        saved_batch = int(state.get("global_batch_size", self.global_batch_size))  # absent in older states
        if saved_batch != self.global_batch_size:
            raise DecoderLMError(f"this state was saved with a global batch of {saved_batch} windows, now "
                                 f"{self.global_batch_size} (batch_size x world_size): resume with the same global batch")
        self.epoch, self.position, self.seed = int(state["epoch"]), int(state["position"]), int(state["seed"])
