"""From conversations to training batches: render them all, split off a held-out set, and serve
batches as a pure function of the step (so a resumed run sees exactly the batches it would have)."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from decoderlm.chat.packing import Batch, pack, packed_batch, padded_batch
from decoderlm.chat.render import ChatRenderer, Example
from decoderlm.errors import DecoderLMError

LAYOUTS = ("packed", "padded")


def render_all(conversations, renderer: ChatRenderer, loss_on: str = "assistant", progress: bool = False) -> list[Example]:
    """Every conversation rendered to ids and loss mask (a tqdm bar when `progress`)."""
    from tqdm.auto import tqdm

    return [renderer.example(c, loss_on) for c in tqdm(conversations, desc="rendering", unit="conv", disable=not progress)]


def split_examples(examples: Sequence[Example], val_fraction: float, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """A seeded random held-out share (at least one example when the fraction is positive)."""
    if not 0.0 <= val_fraction < 1.0:
        raise DecoderLMError(f"the validation fraction must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(len(examples))
    n_val = max(1, round(val_fraction * len(examples))) if val_fraction > 0 else 0
    if n_val >= len(examples):
        raise DecoderLMError(f"{len(examples)} examples are too few to hold {n_val} out for validation")
    val = sorted(order[:n_val].tolist())
    held = set(val)
    return [ex for i, ex in enumerate(examples) if i not in held], [examples[i] for i in val]


class ChatBatches:
    """Rows of a fixed `window` (packed: several examples each; padded: one each), shuffled per
    epoch from (seed, epoch); `batch(step)` depends on nothing else."""

    def __init__(self, examples: Sequence[Example], window: int, batch_size: int, layout: str = "packed", seed: int = 0):
        if layout not in LAYOUTS:
            raise DecoderLMError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        if not examples:
            raise DecoderLMError("there are no chat examples to train on")
        self.examples, self.window, self.batch_size = list(examples), window, batch_size
        self.layout, self.seed = layout, seed
        self.rows = pack(self.examples, window) if layout == "packed" else [[i] for i in range(len(self.examples))]

    @property
    def steps_per_epoch(self) -> int:
        return max(1, len(self.rows) // self.batch_size)  # each epoch's leftover rows differ: none is lost for good

    def rows_at(self, step: int) -> list[int]:
        """Indices (into `rows`) of the rows that make up the batch of `step`."""
        epoch, k = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))
        return order[k * self.batch_size:(k + 1) * self.batch_size].tolist()

    def batch(self, step: int) -> Batch:
        return self._collate([self.rows[i] for i in self.rows_at(step)])

    def in_order(self) -> Iterator[Batch]:
        """Every row once, in order, in batches (the last may be smaller): for evaluation."""
        for start in range(0, len(self.rows), self.batch_size):
            yield self._collate(self.rows[start:start + self.batch_size])

    def _collate(self, rows) -> Batch:
        if self.layout == "packed":
            return packed_batch(self.examples, rows, self.window)
        return padded_batch(self.examples, [row[0] for row in rows], self.window)
