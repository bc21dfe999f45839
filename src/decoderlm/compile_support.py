"""Whether torch.compile can run here: on CPU, inductor writes C++ and needs a compiler."""

from __future__ import annotations

import os
import shutil

import torch


def can_compile(device: torch.device) -> bool:
    if device.type == "cpu":
        return any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "c++"))
    return device.type == "cuda"
