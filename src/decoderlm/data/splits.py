"""The train/validation split, decided document by document as the documents stream past, so no
document count is needed in advance and every document lands in exactly one split.

By document (the rule for any source with enough documents): the stream is cut into consecutive
strata of about 1/val_fraction documents (stratum k holds the documents i with
floor(i * val_fraction) == k) and one document of each stratum, chosen with a seeded hash, is held
out. So n documents hold out floor(n * val_fraction) of them, or one more from a last partial
stratum, spread evenly over the whole source, and which ones depends only on the seed, the
source's position in the list and the document index: never on the tokenizer.

By document tail (a source with fewer than 1/val_fraction documents, e.g. one big file, where no
whole document could be held out): each document's last val_fraction of characters, cut at the
next line break, goes to validation, as nanoGPT splits its single text.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from fractions import Fraction

RULE = ("by document: one of each run of about 1/val_fraction consecutive documents of a source, "
        "chosen by a hash of (seed, source index, run index); a source with fewer documents than that "
        "gives each document's last val_fraction, cut at a line break, to validation")


def uniform(*key) -> float:
    """A number in [0, 1) fixed by `key`: the same on every machine and Python version."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def as_fraction(val_fraction: float) -> Fraction:
    # repr gives the shortest decimal (0.1, not 0.1000000000000000055...), so strata are exact.
    return Fraction(repr(float(val_fraction))).limit_denominator(1 << 30)


def documents_needed(val_fraction: float) -> int | None:
    """The fewest documents that let one whole document be held out; None when nothing is."""
    f = as_fraction(val_fraction)
    return math.ceil(1 / f) if f > 0 else None


@dataclass
class DocumentSplit:
    """Which documents of one source are held out (see the module docstring)."""

    val_fraction: float
    seed: int
    source: int
    unit: str = "document"
    _stratum: int = field(default=-1, repr=False)
    _chosen: int = field(default=-1, repr=False)

    def __post_init__(self):
        f = as_fraction(self.val_fraction)
        self._p, self._q = f.numerator, f.denominator

    def is_val(self, index: int) -> bool:
        if self._p == 0:
            return False
        stratum = index * self._p // self._q
        if stratum != self._stratum:
            start = -(-stratum * self._q // self._p)  # ceil(stratum / f)
            end = -(-(stratum + 1) * self._q // self._p)
            self._stratum = stratum
            self._chosen = start + int(uniform(self.seed, self.source, stratum) * (end - start))
        return index == self._chosen


@dataclass
class TailSplit:
    """Each document's tail goes to validation; `lengths` are the documents' lengths in characters."""

    val_fraction: float
    lengths: list[int]
    unit: str = "document tail"

    def cut_from(self, index: int) -> int:
        """Where the search for the line break that ends document `index`'s training part starts."""
        return int(self.lengths[index] * (1 - self.val_fraction))
