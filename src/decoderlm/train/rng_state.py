"""The random-number states a checkpoint keeps (torch, Python, NumPy), in plain types and tensors so
that the checkpoint loads with weights_only=True."""

from __future__ import annotations

import random

import numpy as np
import torch


def capture() -> dict:
    """Rank 0's RNG states, for code outside the loop that draws random numbers (the loop itself
    re-seeds per step). Plain types and tensors only, for weights_only loading."""
    np_kind, np_keys, np_pos, np_gauss, np_cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [np_kind, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_gauss), float(np_cached)]}


def restore(state: dict | None) -> None:
    if not state:
        return
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
