"""Hand-written int8 / int4 matrix-vector kernels for decoding quantized models on CPU.

At batch 1 a decoding step multiplies one activation row by every weight matrix, so its speed is
how fast the weights stream from memory. torch's kernels for these formats reach about half of the
memory bandwidth there (docs/generation.md has the measurements); `quantized_matvec.cpp` reads
the weights as they are saved (no repacking) at close to the full bandwidth, with AVX-512 and
AVX-512 BF16. No library ships such kernels for CPU, hence the C++.

The C++ file is compiled once per machine, on first use (about ten seconds, with the compiler
torch.compile already uses), into `~/.cache/decoderlm/kernels/` ($XDG_CACHE_HOME honoured), under
a name that hashes the source, the flags and torch's version; later processes load it in
milliseconds. Where the CPU lacks AVX-512 BF16, there is no compiler, or the build fails (one
warning), the quantized layers keep torch's own kernels: same results up to float rounding.
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

from decoderlm.compile_support import can_compile

MAX_ROWS = 8  # activation rows (batch x new tokens) up to which these kernels run; prefill uses torch's
SOURCE = Path(__file__).with_name("quantized_matvec.cpp")
FLAGS = ("-O3", "-std=c++17", "-fPIC", "-shared", "-fopenmp",
         "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16")

# The schemas live here so that torch.compile can trace the calls (with the fake functions below)
# whether or not the C++ side is loaded; the library only adds the CPU implementations.
torch.library.define("decoderlm::int8_matvec", "(Tensor x, Tensor q, Tensor scales) -> Tensor")
torch.library.define("decoderlm::int4_matvec",
                     "(Tensor x, Tensor q, Tensor scales, Tensor zeros, int group_size) -> Tensor")


@torch.library.register_fake("decoderlm::int8_matvec")
def _int8_shape(x, q, scales):
    return x.new_empty(x.shape[0], q.shape[0])


@torch.library.register_fake("decoderlm::int4_matvec")
def _int4_shape(x, q, scales, zeros, group_size):
    return x.new_empty(x.shape[0], q.shape[0])


_loaded: dict[str, bool] = {}  # "ok" -> whether the library is loaded, once tried


def usable(x: torch.Tensor, *tensors: torch.Tensor) -> bool:
    """Whether the kernels take this call: bf16 activations and scales on CPU, at most MAX_ROWS rows.
    Outside torch.compile the first such call loads (or builds) the library; while tracing only an
    already loaded library counts (compiled_step loads it before it compiles)."""
    if (x.device.type != "cpu" or x.dtype != torch.bfloat16 or x.numel() > MAX_ROWS * x.shape[-1]
            or any(t.is_floating_point() and t.dtype != torch.bfloat16 for t in tensors)):
        return False
    if torch.compiler.is_compiling():
        return _loaded.get("ok", False)
    return ensure()


def ensure() -> bool:
    """Load the kernels, building them first if this machine has none yet; False where they cannot run."""
    if "ok" not in _loaded:
        _loaded["ok"] = _load()
    return _loaded["ok"]


def _supported() -> bool:
    has_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)  # private to torch
    return sys.platform == "linux" and has_bf16() and can_compile(torch.device("cpu"))


def _load() -> bool:
    if not _supported():
        return False
    path = _library_path()
    try:
        if not path.is_file():
            _build(path)
        torch.ops.load_library(str(path))
        return True
    except (OSError, RuntimeError, subprocess.CalledProcessError) as err:
        message = err.stderr if isinstance(err, subprocess.CalledProcessError) and err.stderr else str(err)
        first_line = (message.strip().splitlines() or [type(err).__name__])[0][:200]
        warnings.warn(f"the int8/int4 decoding kernels could not be built ({first_line}); "
                      "using torch's kernels", stacklevel=3)
        return False


def _library_path() -> Path:
    about = SOURCE.read_bytes() + repr((FLAGS, torch.__version__, _compiler())).encode()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "decoderlm" / "kernels" / f"quantized_matvec-{hashlib.sha1(about).hexdigest()[:16]}.so"


def _compiler() -> str:
    return os.environ.get("CXX") or "g++"


def _build(path: Path) -> None:
    """Compile into a private file beside `path`, then rename it (a reader sees no library or a whole one)."""
    from torch.utils.cpp_extension import include_paths, library_paths

    print("decoderlm: building the int8/int4 decoding kernels (about ten seconds, once per machine)",
          file=sys.stderr, flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        command = [_compiler(), *FLAGS, str(SOURCE), "-o", partial,
                   f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
                   *[f"-I{p}" for p in include_paths()],
                   *[f"-L{p}" for p in library_paths()], "-lc10", "-ltorch_cpu"]
        subprocess.run(command, check=True, capture_output=True, text=True)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
