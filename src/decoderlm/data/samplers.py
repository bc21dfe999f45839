"""Training batches from a 1-D token array: random windows (nanoGPT) or every window, epoch by epoch
(the mini-course's GutenbergDataset). Both are deterministic given a seed and can save and restore
their position exactly (`state_dict` holds only tensors and ints: fine for `weights_only` loading).

Several processes (DDP ranks) share one *global* batch per step: every rank computes the same
global batch of `batch_size * world_size` windows and keeps its own contiguous part (the split of
`torch.tensor_split(world_size)`). So ranks with `batch_size=B // W` together see, step for step,
exactly the windows a single process with `batch_size=B` sees, and a run can be resumed with another
world size as long as the global batch stays the same.

`tokens` is anything with `len()` and slicing (a numpy array, a memmap, `TokenShards`), or a
`Mixture` of several sources: then each window's source follows the mixture's weights exactly
(`MixtureSchedule`) and the position within the source is drawn as without one. The schedule's
counts are part of the state, so a resumed run continues the same sequence of sources.
"""

from __future__ import annotations

import numpy as np
import torch

from decoderlm.data.mixture import Mixture, MixtureSchedule
from decoderlm.errors import DecoderLMError


def _check(tokens, block_size: int, batch_size: int, rank: int, world_size: int):
    if block_size <= 0 or batch_size <= 0:
        raise DecoderLMError(f"block_size and batch_size must be positive (got {block_size}, {batch_size})")
    if not 0 <= rank < world_size:
        raise DecoderLMError(f"rank {rank} is outside world_size {world_size}")
    named = zip(tokens.names, tokens.streams) if isinstance(tokens, Mixture) else [("this data split", tokens)]
    for name, stream in named:
        if len(stream) < block_size + 1:
            what = name if name == "this data split" else f"source {name!r}"
            raise DecoderLMError(
                f"{what} has {len(stream)} tokens, fewer than block_size + 1 = {block_size + 1}: "
                "use a shorter context, more text, or a larger validation fraction"
            )


def rank_part(global_offsets, rank: int, world_size: int):
    """This rank's contiguous part of a global batch, split as `torch.tensor_split` splits rows."""
    return np.array_split(np.asarray(global_offsets), world_size)[rank]


def _windows(tokens, offsets, block_size: int, sources=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) LongTensors (B, T): y is x shifted left by one token. B may be 0 (see rank_part).
    With `sources` (a Mixture), window i is read from source `sources[i]`."""
    streams = [tokens.streams[s] for s in sources] if sources is not None else [tokens] * len(offsets)
    rows = [np.asarray(stream[o : o + block_size + 1]) for stream, o in zip(streams, offsets)]
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
        self.schedule = MixtureSchedule(tokens.weights) if isinstance(tokens, Mixture) else None

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.batches += 1
        if self.schedule is not None:
            return self._mixture_batch()
        high = len(self.tokens) - self.block_size  # last start whose target still fits
        offsets = torch.randint(high, (self.global_batch_size,), generator=self.generator).numpy()
        return _windows(self.tokens, rank_part(offsets, self.rank, self.world_size).tolist(), self.block_size)

    def _mixture_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        sources = self.schedule.take(self.global_batch_size)
        highs = torch.tensor([len(s) - self.block_size for s in self.tokens.streams], dtype=torch.float64)
        draws = torch.rand(self.global_batch_size, generator=self.generator, dtype=torch.float64)
        offsets = (draws * highs[torch.from_numpy(sources)]).long().numpy()  # uniform in [0, high)
        mine = rank_part(np.arange(self.global_batch_size), self.rank, self.world_size)
        return _windows(self.tokens, offsets[mine].tolist(), self.block_size, sources[mine].tolist())

    def state_dict(self) -> dict:
        state = {"kind": "random", "seed": self.seed, "batches": self.batches, "generator": self.generator.get_state()}
        if self.schedule is not None:
            state["mixture"] = self.schedule.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "random":
            raise DecoderLMError(f"cannot resume random windows from a {state.get('kind')!r} sampler state")
        _load_mixture(self.schedule, state)
        self.seed, self.batches = int(state["seed"]), int(state["batches"])
        self.generator.set_state(state["generator"])


def _load_mixture(schedule: MixtureSchedule | None, state: dict) -> None:
    if (schedule is None) != ("mixture" not in state):
        raise DecoderLMError("this state was saved " + ("with" if schedule is None else "without")
                             + " a weighted mixture of sources, the data has " + ("none" if schedule is None else "one")
                             + ": resume with the same data directory")
    if schedule is not None:
        schedule.load_state_dict(list(state["mixture"]))


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
        self.mixture = _MixtureWindows(tokens, block_size, self.stride, shuffle, seed) if isinstance(tokens, Mixture) else None
        self.n_windows = self.mixture.n_windows if self.mixture else (len(tokens) - block_size - 1) // self.stride + 1
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
        sources = None
        if self.mixture is not None:  # every step a full global batch, each source in its own order
            sources, windows = self.mixture.take(self.global_batch_size)
        else:
            start = self.position * self.global_batch_size
            windows = self._epoch_order()[start : start + self.global_batch_size]
        self.position += 1
        if self.position == self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        mine = rank_part(np.arange(len(windows)), self.rank, self.world_size)
        return _windows(self.tokens, (windows[mine] * self.stride).tolist(), self.block_size,
                        None if sources is None else sources[mine].tolist())

    def state_dict(self) -> dict:
        state = {"kind": "sequential", "epoch": self.epoch, "position": self.position, "seed": self.seed,
                 "n_windows": self.n_windows, "global_batch_size": self.global_batch_size}
        if self.mixture is not None:
            state["mixture"] = self.mixture.schedule.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "sequential":
            raise DecoderLMError(f"cannot resume sequential windows from a {state.get('kind')!r} sampler state")
        _load_mixture(self.mixture.schedule if self.mixture else None, state)
        if int(state["n_windows"]) != self.n_windows:
            raise DecoderLMError(f"the data changed since this state was saved ({state['n_windows']} windows, "
                                 f"now {self.n_windows}): resume with the same data directory and context")
        saved_batch = int(state.get("global_batch_size", self.global_batch_size))  # absent in older states
        if saved_batch != self.global_batch_size:
            raise DecoderLMError(f"this state was saved with a global batch of {saved_batch} windows, now "
                                 f"{self.global_batch_size} (batch_size x world_size): resume with the same global batch")
        self.epoch, self.position, self.seed = int(state["epoch"]), int(state["position"]), int(state["seed"])


class _MixtureWindows:
    """Sequential windows of a Mixture: each source's windows in an order of their own, shuffled
    anew for each of that source's passes; the schedule decides which source fills each slot."""

    def __init__(self, mixture: Mixture, block_size: int, stride: int, shuffle: bool, seed: int):
        self.counts = [(len(s) - block_size - 1) // stride + 1 for s in mixture.streams]
        self.n_windows = sum(self.counts)
        self.schedule = MixtureSchedule(mixture.weights)
        self.shuffle, self.seed, self._orders = shuffle, seed, {}

    def take(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        served = self.schedule.taken.copy()  # windows each source has served so far
        sources = self.schedule.take(n)
        windows = np.empty(n, dtype=np.int64)
        for i, source in enumerate(sources.tolist()):
            epoch, position = divmod(int(served[source]), self.counts[source])
            windows[i] = self._order(source, epoch)[position]
            served[source] += 1
        return sources, windows

    def _order(self, source: int, epoch: int) -> np.ndarray:
        if (source, epoch) not in self._orders:
            if len(self._orders) > 2 * len(self.counts):
                self._orders.clear()
            n = self.counts[source]
            self._orders[source, epoch] = (np.random.default_rng([self.seed, source, epoch]).permutation(n)
                                           if self.shuffle else np.arange(n))
        return self._orders[source, epoch]
