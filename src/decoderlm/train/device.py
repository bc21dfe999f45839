"""Device and precision, chosen once per run and passed down.

Measured on this project's reference CPU (2 cores of a Sapphire Rapids Xeon with AMX), the
`shakespeare` preset trains faster under bf16 autocast than in fp32, so `dtype="auto"` means bf16
autocast wherever the hardware runs bf16 matmuls natively (CUDA with bf16 support, CPUs with
AMX/AVX512-BF16) and fp32 elsewhere. Weights and optimizer state stay fp32 either way.
"""

from __future__ import annotations

import functools

import torch

from decoderlm.config import DTYPE_ALIASES
from decoderlm.errors import DecoderLMError


def choose_device(local_rank: int = 0) -> torch.device:
    """cuda > mps > cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16: the CPU features that make bf16 matmuls faster than fp32 ones."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return any(f in flags.split() for f in ("amx_bf16", "avx512_bf16"))


def autocast_dtype(device: torch.device, dtype: str) -> torch.dtype | None:
    """The autocast dtype for `train.dtype` (None: plain fp32)."""
    name = DTYPE_ALIASES.get(dtype, dtype)
    if name == "float32":
        return None
    if name == "bfloat16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise DecoderLMError("train.dtype=bfloat16 but this GPU does not support bf16; use float32")
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else None
    return None  # mps: bf16 autocast is not consistently faster there


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
