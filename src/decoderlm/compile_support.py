"""Whether torch.compile can run here (on CPU, inductor writes C++ and needs a compiler), and where
its compiled code is cached between runs."""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import torch


def can_compile(device: torch.device) -> bool:
    if device.type == "cpu":
        return _cpu_compiler_found()
    return device.type == "cuda"


@functools.lru_cache(maxsize=None)
def _cpu_compiler_found() -> bool:
    return any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "c++"))


def cache_home() -> Path:
    """decoderlm's folder for what it builds per machine ($XDG_CACHE_HOME honoured)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "decoderlm"


def use_persistent_cache() -> None:
    """Keep inductor's on-disk caches (compiled graphs, autotuning) in the user's cache directory
    rather than /tmp, so a compile is paid once per machine, not once per boot. An explicit
    TORCHINDUCTOR_CACHE_DIR wins."""
    if "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        return
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_home() / "torchinductor")
