"""Training windows from rendered examples: fitting to the context, best-fit packing, and the
tensors for the model (ids, targets, positions, block-diagonal causal mask), plus one-example-per-row
padding to compare against.

An example of n tokens takes n - 1 window positions: inputs ids[:-1], targets ids[1:] (-100 where the
loss mask is off). Targets never cross from one example into the next, so packing needs no special
case at example boundaries; positions restart at 0 at each example and the mask lets a token see only
earlier tokens of its own example. A packed window therefore gives each example exactly the logits
and loss it would have alone.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from decoderlm.chat.render import Example
from decoderlm.errors import DecoderLMError

IGNORE_INDEX = -100
OVERFLOW = ("truncate", "drop")


@dataclass
class FitReport:
    kept: int = 0
    truncated: int = 0
    dropped_too_long: int = 0  # overflow="drop"
    dropped_no_loss: int = 0  # nothing left to learn after truncation (the prompt alone fills the window)

    def summary(self) -> str:
        return (f"{self.kept} examples kept, {self.truncated} truncated to the context, "
                f"{self.dropped_too_long} dropped as too long, {self.dropped_no_loss} dropped with no loss tokens left")


@dataclass
class Batch:
    """idx, targets: (B, T) long. positions: (B, T) long and attention_mask: (B, 1, T, T) bool
    (True = may attend) for packed rows; None for padded rows, which need only the causal mask."""

    idx: torch.Tensor
    targets: torch.Tensor
    positions: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None

    @property
    def loss_tokens(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())


def fit_to_window(examples: Sequence[Example], window: int, overflow: str = "truncate") -> tuple[list[Example], FitReport]:
    """Examples that fit a `window`-position context (at most window + 1 tokens): longer ones are cut
    at the end or dropped; any left without a loss token are dropped too."""
    if overflow not in OVERFLOW:
        raise DecoderLMError(f"overflow must be one of {', '.join(OVERFLOW)}, got {overflow!r}")
    kept, report = [], FitReport()
    for ex in examples:
        if len(ex) > window + 1:
            if overflow == "drop":
                report.dropped_too_long += 1
                continue
            ex = Example(ex.ids[:window + 1], ex.loss_mask[:window + 1])
            report.truncated += 1
        if not ex.loss_mask[1:].any():
            report.dropped_no_loss += 1
            continue
        kept.append(ex)
    report.kept = len(kept)
    return kept, report


def best_fit(sizes: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing bin packing: indices of `sizes` grouped into bins of at most `capacity`.
    Each item, largest first, goes to the open bin it fills most tightly (a new bin if none fits).
    Hand-written: it is a dozen lines, and no well-kept library packs sequences this way."""
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, bin index), sorted
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        size = sizes[i]
        if size > capacity:
            raise DecoderLMError(f"an example of {size} positions does not fit a window of {capacity}: fit them first")
        at = bisect.bisect_left(free, (size, -1))
        if at < len(free):
            space, b = free.pop(at)
        else:
            space, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        bisect.insort(free, (space - size, b))
    return bins


def pack(examples: Sequence[Example], window: int) -> list[list[int]]:
    """Rows of example indices, each row's examples filling at most `window` positions."""
    return best_fit([len(ex) - 1 for ex in examples], window)


def block_causal_layout(row_sizes: Sequence[Sequence[int]], window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For rows made of consecutive segments of the given sizes: the (B, 1, T, T) bool mask, True where
    query t may attend key s (same segment and s <= t), and (B, T) positions counting from 0 in each
    segment. The unused tail of a row is one more segment, so no row of the mask is empty."""
    segments, positions = [], []
    for sizes in row_sizes:
        used = sum(sizes)
        if used > window:
            raise DecoderLMError(f"segments of {used} positions do not fit a window of {window}")
        lengths = torch.tensor([*sizes, window - used], dtype=torch.long)
        segment = torch.repeat_interleave(torch.arange(len(lengths)), lengths)  # (T,)
        starts = torch.cumsum(lengths, 0) - lengths
        segments.append(segment)
        positions.append(torch.arange(window) - starts[segment])
    segment = torch.stack(segments)  # (B, T)
    causal = torch.ones(window, window, dtype=torch.bool).tril()
    mask = (segment.unsqueeze(2) == segment.unsqueeze(1)) & causal  # (B, T, T)
    return mask.unsqueeze(1), torch.stack(positions)


def packed_batch(examples: Sequence[Example], rows: Sequence[Sequence[int]], window: int) -> Batch:
    """One (B, window) batch whose row b holds the examples rows[b], packed end to end."""
    idx = torch.zeros(len(rows), window, dtype=torch.long)
    targets = torch.full((len(rows), window), IGNORE_INDEX, dtype=torch.long)
    for b, row in enumerate(rows):
        pairs = [_inputs_and_targets(examples[i]) for i in row]
        if pairs:
            inputs, wanted = np.concatenate([x for x, _ in pairs]), np.concatenate([y for _, y in pairs])
            idx[b, :len(inputs)] = torch.from_numpy(inputs)
            targets[b, :len(wanted)] = torch.from_numpy(wanted)
    mask, positions = block_causal_layout([[len(examples[i]) - 1 for i in row] for row in rows], window)
    return Batch(idx, targets, positions, mask)


def padded_batch(examples: Sequence[Example], rows: Sequence[int], width: int | None = None) -> Batch:
    """One example per row, right-padded to `width` (default: the longest): the layout packing replaces.
    Padding sits after the real tokens, so the plain causal mask keeps it out of their attention."""
    pairs = [_inputs_and_targets(examples[i]) for i in rows]
    width = width or max(len(x) for x, _ in pairs)
    idx = torch.zeros(len(rows), width, dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for b, (inputs, wanted) in enumerate(pairs):
        idx[b, :len(inputs)] = torch.from_numpy(inputs)
        targets[b, :len(wanted)] = torch.from_numpy(wanted)
    return Batch(idx, targets)


def _inputs_and_targets(ex: Example) -> tuple[np.ndarray, np.ndarray]:
    ids = ex.ids.astype(np.int64)
    return ids[:-1], np.where(ex.loss_mask[1:], ids[1:], IGNORE_INDEX)


def layout_efficiency(lengths: Sequence[int], window: int, batch_size: int) -> dict[str, float]:
    """Share of the window positions that hold real tokens, for the same examples (token counts
    `lengths`, each at most window + 1) laid out three ways: packed (best fit), one per row padded to
    the window, and one per row padded to the longest of its batch (batches in data order). The
    ratio of two shares is the throughput gain: the same work in fewer positions computed."""
    sizes = [n - 1 for n in lengths]
    real = sum(sizes)
    packed_rows = len(best_fit(sizes, window))
    dynamic = sum(len(batch) * max(batch) for batch in (sizes[i:i + batch_size] for i in range(0, len(sizes), batch_size)))
    shares = {
        "packed": real / (packed_rows * window),
        "padded_to_window": real / (len(sizes) * window),
        "padded_to_batch_longest": real / dynamic,
    }
    return {**shares, "rows_packed": packed_rows, "rows_padded": len(sizes),
            "gain_over_padded_to_window": shares["packed"] / shares["padded_to_window"],
            "gain_over_padded_to_batch_longest": shares["packed"] / shares["padded_to_batch_longest"]}
