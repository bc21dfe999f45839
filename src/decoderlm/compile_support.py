"""Whether torch.compile can run here: on CPU, inductor writes C++ and needs a compiler."""

from __future__ import annotations

import functools
import os
import shutil

import torch


def can_compile(device: torch.device) -> bool:
    if device.type == "cpu":
        return _cpu_compiler_found()
    return device.type == "cuda"


@functools.lru_cache(maxsize=None)
def _cpu_compiler_found() -> bool:
    return any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "c++"))
