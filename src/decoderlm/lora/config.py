"""`LoRAConfig`: which projections get low-rank adapters, their rank and their scale.

The adapter on a weight W (out x in) is delta W = scale * B @ A with A (rank x in) and B (out x rank),
scale = alpha / rank (alpha / sqrt(rank) with rsLoRA), as in the LoRA paper and PEFT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from decoderlm.errors import DecoderLMError

# The seven projections of a Llama block, in PEFT's naming order (q_proj, ..., down_proj).
ATTENTION_TARGETS = ("q", "k", "v", "o")
FFN_TARGETS = ("gate", "up", "down")
TARGETS = ATTENTION_TARGETS + FFN_TARGETS
HEAD = "head"  # the output head, selected with `head=True` (or "head" in a targets string)


@dataclass(frozen=True)
class LoRAConfig:
    rank: int
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = TARGETS
    head: bool = False
    rslora: bool = False  # rank-stabilised scale alpha / sqrt(rank) (Kalajdzievski 2023), PEFT's use_rslora

    def __post_init__(self):
        object.__setattr__(self, "targets", _normalise_targets(self.targets, allow_empty=self.head is True))
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise DecoderLMError(f"LoRA rank must be a positive integer, got {self.rank!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not (
                math.isfinite(self.alpha) and self.alpha > 0):
            raise DecoderLMError(f"LoRA alpha must be a positive number, got {self.alpha!r}")
        if not isinstance(self.head, bool) or not isinstance(self.rslora, bool):
            raise DecoderLMError(f"LoRA head and rslora must be true or false, got {self.head!r} and {self.rslora!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise DecoderLMError(f"LoRA dropout must be a number in [0, 1), got {self.dropout!r}")

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

    def to_dict(self) -> dict:
        return {"rank": self.rank, "alpha": self.alpha, "dropout": self.dropout, "targets": list(self.targets),
                "head": self.head, "rslora": self.rslora}

    @classmethod
    def from_dict(cls, data: dict) -> "LoRAConfig":
        known = {"rank", "alpha", "dropout", "targets", "head", "rslora"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DecoderLMError(f"unknown LoRA setting(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        if "rank" not in data:
            raise DecoderLMError("the LoRA settings lack 'rank'")
        return cls(**{**data, "targets": tuple(data.get("targets", TARGETS))})


def parse_targets(text: str) -> tuple[tuple[str, ...], bool]:
    """'q,k,v,o,gate,up,down[,head]' (a --set value) -> (targets, head)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    head = HEAD in names
    targets = tuple(name for name in names if name != HEAD)
    return _normalise_targets(targets, allow_empty=head), head


def _normalise_targets(targets: Iterable[str] | str, allow_empty: bool = False) -> tuple[str, ...]:
    if isinstance(targets, str):
        targets = (targets,)
    targets = tuple(targets)
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        hint = "; the output head is selected with head=True" if HEAD in unknown else ""
        raise DecoderLMError(f"unknown LoRA target {unknown[0]!r}: choose from {', '.join(TARGETS)}{hint}")
    if len(set(targets)) != len(targets):
        raise DecoderLMError(f"LoRA targets list a projection twice: {', '.join(targets)}")
    if not targets and not allow_empty:
        raise DecoderLMError(f"LoRA needs at least one target among {', '.join(TARGETS)}")
    return tuple(t for t in TARGETS if t in targets)  # canonical order
