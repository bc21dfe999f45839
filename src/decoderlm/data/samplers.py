"""Training batches from a 1-D token array: random windows (nanoGPT) or every window, epoch by epoch
(the mini-course's GutenbergDataset). Both are deterministic given a seed and can save and restore
their position exactly (`state_dict` holds only tensors and ints: fine for `weights_only` loading).
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


def _windows(tokens, offsets, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) LongTensors (B, T): y is x shifted left by one token."""
    rows = np.stack([np.asarray(tokens[o : o + block_size + 1]) for o in offsets]).astype(np.int64)
    both = torch.from_numpy(rows)
    return both[:, :-1].contiguous(), both[:, 1:].contiguous()


class RandomWindows:
    """Uniformly random windows, as nanoGPT's get_batch. Each rank draws from its own seed."""

    def __init__(self, tokens, block_size: int, batch_size: int, seed: int = 1337, *, rank: int = 0, world_size: int = 1):
        _check(tokens, block_size, batch_size, rank, world_size)
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        self.seed = seed + rank
        self.generator = torch.Generator().manual_seed(self.seed)
        self.batches = 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        high = len(self.tokens) - self.block_size  # last start whose target still fits
        offsets = torch.randint(high, (self.batch_size,), generator=self.generator).tolist()
        self.batches += 1
        return _windows(self.tokens, offsets, self.block_size)

    def state_dict(self) -> dict:
        return {"kind": "random", "seed": self.seed, "batches": self.batches, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "random":
            raise DecoderLMError(f"cannot resume random windows from a {state.get('kind')!r} sampler state")
        self.seed, self.batches = int(state["seed"]), int(state["batches"])
        self.generator.set_state(state["generator"])


class SequentialWindows:
    """Every window starting at 0, stride, 2*stride, ... once per epoch, shuffled per epoch if asked.

    `epoch` counts completed passes; `position` is the next batch's index within the current pass.
    With several processes, the epoch's batches are dealt out in turn (batch b goes to rank
    b % world_size) and every rank gets the same number of batches, so none waits on another.
    The last batch of a pass may hold fewer than batch_size windows.
    """

    def __init__(self, tokens, block_size: int, batch_size: int, stride: int | None = None, shuffle: bool = True,
                 seed: int = 1337, *, rank: int = 0, world_size: int = 1):
        _check(tokens, block_size, batch_size, rank, world_size)
        self.stride = stride or block_size
        if self.stride <= 0:
            raise DecoderLMError(f"stride must be positive, got {stride}")
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self.n_windows = (len(tokens) - block_size - 1) // self.stride + 1
        total = -(-self.n_windows // batch_size)
        if total < world_size:
            raise DecoderLMError(f"{self.n_windows} windows make {total} batches, fewer than {world_size} processes: "
                                 "use more data or a smaller batch size")
        self.batches_per_epoch = total // world_size
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
        order = self._epoch_order()
        b = self.position * self.world_size + self.rank
        windows = order[b * self.batch_size : (b + 1) * self.batch_size]
        self.position += 1
        if self.position == self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        return _windows(self.tokens, (windows * self.stride).tolist(), self.block_size)

    def state_dict(self) -> dict:
        return {"kind": "sequential", "epoch": self.epoch, "position": self.position, "seed": self.seed,
                "n_windows": self.n_windows}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "sequential":
            raise DecoderLMError(f"cannot resume sequential windows from a {state.get('kind')!r} sampler state")
        if int(state["n_windows"]) != self.n_windows:
            raise DecoderLMError(f"the data changed since this state was saved ({state['n_windows']} windows, "
                                 f"now {self.n_windows}): resume with the same data directory and context")
        self.epoch, self.position, self.seed = int(state["epoch"]), int(state["position"]), int(state["seed"])
