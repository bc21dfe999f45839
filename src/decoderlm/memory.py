"""What a model and its buffers need against what the machine has, checked before allocating.

A size that cannot fit (a 10^8-wide model, a million beams) is refused in one line naming the size,
instead of ending in an allocator's traceback or the kernel's OOM killer. The estimates are lower
bounds (weights, gradients, optimizer state, caches; not every temporary), so a refusal is certain
and a size that passes may still be tight.
"""

from __future__ import annotations

import os

import torch

from decoderlm.config import ModelConfig
from decoderlm.errors import DecoderLMError


def available_bytes(device: torch.device | str = "cpu") -> int | None:
    """Free memory on `device` (host RAM for cpu and mps); None where it cannot be read."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return torch.cuda.mem_get_info(device)[0]
        except (RuntimeError, AssertionError):  # no such GPU: torch says so itself, later
            return None
    return _host_available_bytes()


def _host_available_bytes() -> int | None:
    # Hand-written because psutil is not a dependency: Linux's MemAvailable (what can be allocated
    # without swapping), else the physical memory from sysconf (macOS), else unknown.
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(n: float) -> str:
    """'512 B', '1.5 GB' (decimal units, as disk and memory sizes are quoted)."""
    units = ("B", "kB", "MB", "GB", "TB", "PB")
    power = 0
    while n >= 1000 and power < len(units) - 1:
        n, power = n / 1000, power + 1
    return f"{n:.0f} B" if power == 0 else f"{n:.1f} {units[power]}"


def require(needed: int, what: str, device: torch.device | str = "cpu", hint: str = "") -> None:
    """Refuse `what` in one line if it needs more than `device` has free."""
    available = available_bytes(device)
    if available is not None and needed > available:
        where = "" if torch.device(device).type == "cpu" else f" on {device}"
        raise DecoderLMError(f"{what} needs at least {format_bytes(needed)}, more than the "
                             f"{format_bytes(available)} of memory available{where}" + (f"; {hint}" if hint else ""))


def model_numel(config: ModelConfig) -> tuple[int, int]:
    """(parameters, buffer elements) of DecoderLM(config), counted on the meta device, which
    allocates nothing. One and two layers are built and the difference scaled, so a config with
    absurdly many layers costs no more to measure than a small one."""
    from decoderlm.model import DecoderLM

    counts = []
    for layers in (1, 2):
        with torch.device("meta"):
            model = DecoderLM(config.replace(n_layer=layers))
        params = {id(p): p.numel() for p in model.parameters()}  # a tied head counts once
        counts.append((sum(params.values()), sum(b.numel() for b in model.buffers())))
    (p1, b1), (p2, b2) = counts
    extra = config.n_layer - 1
    return p1 + extra * (p2 - p1), b1 + extra * (b2 - b1)


def describe_size(config: ModelConfig, params: int) -> str:
    """'a model of 120,000,000,000 parameters (vocab_size 512, d_model 100000000, ...)'"""
    return (f"a model of {params:,} parameters (model.vocab_size {config.vocab_size}, model.d_model "
            f"{config.d_model}, model.n_layer {config.n_layer}, model.d_ff {config.d_ff}, "
            f"model.max_seq_len {config.max_seq_len})")


def require_model(config: ModelConfig, dtype: torch.dtype, device: torch.device | str = "cpu") -> None:
    """Refuse to build a model whose weights alone do not fit (loading for generation)."""
    params, buffers = model_numel(config)
    element = torch.empty((), dtype=dtype).element_size()
    require((params + buffers) * element, f"{describe_size(config, params)} in {str(dtype).removeprefix('torch.')}",
            device)
