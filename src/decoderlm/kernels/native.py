"""decoderlm's own C++ kernels for decoding on CPU, and the one place that builds and loads them.

`quantized_matvec.cpp`: int8 / int4 matrix-vector products for quantized layers. At batch 1 a
decoding step multiplies one activation row by every weight matrix, so it runs at the speed the
weights stream from memory; torch's kernels for these formats reach about half of it here.
`decoding_attention.cpp`: one new token's attention over a bf16 KV cache, reading only the slots the
mask shows (torch's CPU attention kernels take several times longer than reading the cache on one
query row). Both need AVX-512 with BF16; on CPUs with AVX2 (and FMA) but not those,
`quantized_matvec_avx2.cpp` provides the same two products and torch keeps the attention.
docs/generation.md has the measurements; no library ships such kernels for CPU, hence the C++.

The sources are compiled once per machine, by the first compiled decoding step (about ten seconds,
with the compiler torch.compile already uses), into one library in `~/.cache/decoderlm/kernels/`
($XDG_CACHE_HOME honoured), named by a hash of the sources, the flags and torch's version; later
processes load it in milliseconds. Where the CPU has neither instruction set, there is no compiler, or
the build fails (one warning), the callers keep torch's own kernels: the same results up to float
rounding. DECODERLM_KERNELS=avx2 takes the AVX2 build on an AVX-512 CPU too (to compare or test it),
DECODERLM_KERNELS=none keeps torch's kernels.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from decoderlm.compile_support import cache_home, can_compile

MAX_ROWS = 8  # activation rows (batch x new tokens) up to which the matvec kernels run; prefill: torch's
FLAGS = ("-O3", "-std=c++17", "-fPIC", "-shared", "-fopenmp")
# The two builds: their sources and instruction-set flags. Only the AVX-512 BF16 one has the attention kernel.
BUILDS = {
    "avx512_bf16": (("quantized_matvec.cpp", "decoding_attention.cpp"),
                    ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16")),
    "avx2": (("quantized_matvec_avx2.cpp",), ("-mavx2", "-mfma")),
}

# The schemas live here so that torch.compile can trace the calls (with the fake functions below)
# whether or not the C++ side is loaded; the library only adds the CPU implementations.
torch.library.define("decoderlm::int8_matvec", "(Tensor x, Tensor q, Tensor scales) -> Tensor")
torch.library.define("decoderlm::int4_matvec",
                     "(Tensor x, Tensor q, Tensor scales, Tensor zeros, int group_size) -> Tensor")
torch.library.define("decoderlm::decoding_attention", "(Tensor q, Tensor k, Tensor v, Tensor visible) -> Tensor")


@torch.library.register_fake("decoderlm::int8_matvec")
def _int8_shape(x, q, scales):
    return x.new_empty(x.shape[0], q.shape[0])


@torch.library.register_fake("decoderlm::int4_matvec")
def _int4_shape(x, q, scales, zeros, group_size):
    return x.new_empty(x.shape[0], q.shape[0])


@torch.library.register_fake("decoderlm::decoding_attention")
def _attention_shape(q, k, v, visible):
    return torch.empty_like(q)


_loaded: dict[str, bool] = {}  # "ok": whether the library is loaded, once tried; "absent": not built yet
_loaded_kind: list[str] = []  # the build (a key of BUILDS) this process loaded
_loaded_from: list[Path] = []  # the file this process loaded


def matvec_usable(x: torch.Tensor, *tensors: torch.Tensor) -> bool:
    """Whether the matvec kernels take this call: bf16 activations and scales on CPU, at most MAX_ROWS rows."""
    if (x.device.type != "cpu" or x.dtype != torch.bfloat16 or x.numel() > MAX_ROWS * x.shape[-1]
            or any(t.is_floating_point() and t.dtype != torch.bfloat16 for t in tensors)):
        return False
    return _ready()


def attention_usable(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask) -> bool:
    """Whether the attention kernel takes this call: bf16 on CPU, heads of a multiple of 32 values,
    each head's cache rows contiguous, a boolean mask (or none)."""
    if (q.device.type != "cpu" or q.dtype != torch.bfloat16 or k.dtype != torch.bfloat16 or q.shape[-1] % 32
            or any(t.stride(-1) != 1 or t.stride(-2) != t.shape[-1] for t in (k, v))
            or (mask is not None and mask.dtype != torch.bool)):
        return False
    return _ready() and loaded_build() == "avx512_bf16"


def loaded_build() -> str | None:
    """The build this process loaded (a key of BUILDS), or None."""
    return _loaded_kind[0] if _loaded_kind else None


def _ready() -> bool:
    """Whether the library is loaded, loading it if it is built. Plain (eager) decoding never waits
    for a build; the compiled paths, which already take tens of seconds, build it (ensure())."""
    if "ok" not in _loaded and not torch.compiler.is_compiling():
        ensure(build=False)
    return _loaded.get("ok", False)


def ensure(build: bool = True) -> bool:
    """Load the kernels, building them first (with `build`) if this machine has none yet; False
    where they cannot run."""
    if "ok" not in _loaded and (build or not _loaded.get("absent")):
        if _kind() is None:
            _loaded["ok"] = False
        elif build or _library_path().is_file():
            _loaded["ok"] = _load()
        else:
            _loaded["absent"] = True  # not built yet: asked again only by a build
    return _loaded.get("ok", False)


def _kind() -> str | None:
    """The build this CPU runs (a key of BUILDS), or None: torch's kernels."""
    if sys.platform != "linux" or not can_compile(torch.device("cpu")):
        return None
    wanted = os.environ.get("DECODERLM_KERNELS", "")
    if wanted == "none":
        return None
    has_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()  # private to torch
    # torch's "AVX2" capability means AVX2 and FMA; "AVX512" includes them
    has_avx2 = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    if has_bf16 and wanted != "avx2":
        return "avx512_bf16"
    return "avx2" if has_avx2 else None


def _sources_and_flags() -> tuple[list[Path], tuple[str, ...]]:
    names, isa = BUILDS[_kind()]
    return [Path(__file__).with_name(name) for name in names], FLAGS + isa


def _load() -> bool:
    path = _library_path()
    try:
        if not path.is_file():
            _build(path)
        torch.ops.load_library(str(path))
        _loaded_from.append(path)
        _loaded_kind.append(_kind())
        return True
    except (OSError, RuntimeError, subprocess.CalledProcessError) as err:
        message = err.stderr if isinstance(err, subprocess.CalledProcessError) and err.stderr else str(err)
        first_line = (message.strip().splitlines() or [type(err).__name__])[0][:200]
        warnings.warn(f"decoderlm's decoding kernels could not be built ({first_line}); "
                      "using torch's kernels", stacklevel=3)
        return False


def _library_path() -> Path:
    sources, flags = _sources_and_flags()
    headers = [Path(__file__).with_name("matvec_common.h")]
    about = b"".join(p.read_bytes() for p in sources + headers) + repr((flags, torch.__version__, _compiler())).encode()
    return cache_home() / "kernels" / f"decoding-{_kind()}-{hashlib.sha1(about).hexdigest()[:16]}.so"


def _compiler() -> str:
    return os.environ.get("CXX") or "g++"


def _build(path: Path) -> None:
    """Compile into a private file beside `path`, then rename it (a reader sees no library or a whole one)."""
    from torch.utils.cpp_extension import include_paths, library_paths

    print("decoderlm: building its CPU decoding kernels (about ten seconds, once per machine)",
          file=sys.stderr, flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        sources, flags = _sources_and_flags()
        command = [_compiler(), *flags, *map(str, sources), "-o", partial,
                   f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
                   *[f"-I{p}" for p in include_paths()],
                   *[f"-L{p}" for p in library_paths()], "-lc10", "-ltorch_cpu"]
        subprocess.run(command, check=True, capture_output=True, text=True)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
