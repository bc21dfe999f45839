"""Weighted mixtures of sources: `--source A --weight 0.7 --source B --weight 0.3`.

`prepare` keeps each source's tokens in shards of their own and records the weights; training then
draws each window's source by `MixtureSchedule` (the source furthest behind its share goes next,
so after n windows every source has had its share to within one window, and the order depends on
nothing but the weights: resuming needs only the counts) and the window's position within that
source at random.
"""

from __future__ import annotations

import math

import numpy as np

from decoderlm.errors import DecoderLMError


def normalise_weights(weights, n_sources: int) -> list[float] | None:
    """Weights summing to 1, one per source; None when none are given."""
    if not weights:
        return None
    if len(weights) != n_sources:
        raise DecoderLMError(f"{len(weights)} --weight value(s) for {n_sources} --source value(s): "
                             "give one weight per source, in the same order")
    for weight in weights:
        if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
            raise DecoderLMError(f"--weight {weight} is not a positive number: weights are shares such as 0.7 and 0.3")
    total = float(sum(weights))
    return [float(w) / total for w in weights]


class MixtureSchedule:
    """The source of each successive window, in the proportions of `weights`."""

    def __init__(self, weights):
        self.weights = np.asarray(weights, dtype=np.float64)
        self.taken = np.zeros(len(self.weights), dtype=np.int64)

    def take(self, n: int) -> np.ndarray:
        sources = np.empty(n, dtype=np.int64)
        for i in range(n):
            behind = self.weights * (int(self.taken.sum()) + 1) - self.taken
            sources[i] = source = int(np.argmax(behind))  # ties: the first source
            self.taken[source] += 1
        return sources

    def state_dict(self) -> list[int]:
        return self.taken.tolist()

    def load_state_dict(self, taken: list[int]) -> None:
        if len(taken) != len(self.weights):
            raise DecoderLMError(f"this state was saved for a mixture of {len(taken)} sources, the data has "
                                 f"{len(self.weights)}: resume with the same data directory")
        self.taken = np.asarray(taken, dtype=np.int64)


class Mixture:
    """The token streams of several sources and their weights: what `TokenData.train` is for a
    weighted data directory. `len()` is all their tokens together."""

    def __init__(self, streams: list, weights: list[float], names: list[str]):
        self.streams, self.weights, self.names = streams, list(weights), names

    def __len__(self) -> int:
        return sum(len(s) for s in self.streams)

    def __getitem__(self, key):
        raise DecoderLMError("a weighted mixture is not one sequence of tokens: sample it with RandomWindows or "
                             "SequentialWindows, or read one source's tokens from .streams[i]")

    def __repr__(self) -> str:
        parts = ", ".join(f"{n} {w:.3g}: {len(s)}" for n, w, s in zip(self.names, self.weights, self.streams))
        return f"Mixture({parts})"
