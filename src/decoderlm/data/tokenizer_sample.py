"""`--tokenizer-sample 200MB`: train the tokenizer on a deterministic sample spread over the whole
corpus instead of on all of it (whose word counts would grow with the corpus).

The corpus is read once to measure it, then again keeping each piece (about 8 kB, see pieces.py)
whose seeded hash falls below sample / total: about the requested size, from every part of every
source, the same on every run.
"""

from __future__ import annotations

import re
from typing import Iterable, Iterator

from decoderlm.data.splits import uniform
from decoderlm.errors import DecoderLMError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str | int | None) -> int | None:
    """Bytes from "200MB", "1.5GB", "64MiB" or a plain number; None for None or "all"."""
    if text is None or (isinstance(text, str) and text.strip().lower() == "all"):
        return None
    if isinstance(text, int) and not isinstance(text, bool):
        size = text
    else:
        match = _SIZE.match(str(text))
        unit = match[2].lower() if match else None
        if not match or unit not in _UNITS:
            raise DecoderLMError(f"--tokenizer-sample {text!r} is not a size: use e.g. 200MB, 1GB or all")
        size = int(float(match[1]) * _UNITS[unit])
    if size <= 0:
        raise DecoderLMError(f"--tokenizer-sample must be positive, got {text!r}")
    return size


class Sample:
    """Which pieces to train on, given the corpus size; counts what it kept."""

    def __init__(self, target: int, total: int, seed: int):
        self.target, self.total, self.seed = target, total, seed
        self.ratio = 1.0 if total <= target else target / total
        self.bytes = 0

    def keep(self, texts: Iterable[str]) -> Iterator[str]:
        for index, text in enumerate(texts):
            if self.ratio >= 1.0 or uniform(self.seed, "tokenizer sample", index) < self.ratio:
                self.bytes += len(text.encode("utf-8"))
                yield text

    def describe(self) -> dict:
        return {"requested_bytes": self.target, "corpus_bytes": self.total, "sampled_bytes": self.bytes}
