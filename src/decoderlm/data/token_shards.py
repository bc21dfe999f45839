"""Several token files read as one 1-D sequence: what the samplers index. Each file is a read-only
memmap, so only the windows read are paged in; a window may span two files."""

from __future__ import annotations

import bisect
import operator

import numpy as np


class TokenShards:
    def __init__(self, arrays: list[np.ndarray], dtype: np.dtype):
        self.arrays = [a for a in arrays if len(a)]
        self.dtype = np.dtype(dtype)
        self.starts = [0]
        for array in self.arrays:
            self.starts.append(self.starts[-1] + len(array))

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            return self._range(start, stop) if step == 1 else np.asarray(self)[key]
        index = operator.index(key)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"token index {key} is out of range for {len(self)} tokens")
        shard = bisect.bisect_right(self.starts, index) - 1
        return self.arrays[shard][index - self.starts[shard]]

    def _range(self, start: int, stop: int) -> np.ndarray:
        if stop <= start:
            return np.zeros(0, dtype=self.dtype)
        first = bisect.bisect_right(self.starts, start) - 1
        if stop <= self.starts[first + 1]:  # within one file: a view of its memmap
            return self.arrays[first][start - self.starts[first]: stop - self.starts[first]]
        parts, shard = [], first
        while shard < len(self.arrays) and self.starts[shard] < stop:
            offset = self.starts[shard]
            parts.append(self.arrays[shard][max(start, offset) - offset: min(stop, self.starts[shard + 1]) - offset])
            shard += 1
        return np.concatenate(parts)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = np.concatenate(self.arrays) if self.arrays else np.zeros(0, dtype=self.dtype)
        return whole.astype(dtype) if dtype is not None else whole

    def tolist(self) -> list[int]:
        return np.asarray(self).tolist()

    def __repr__(self) -> str:
        return f"TokenShards({len(self.arrays)} files, {len(self)} tokens, {self.dtype.name})"
