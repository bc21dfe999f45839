"""Small functions compiled on their own for training on CPU, while the model stays eager.

PyTorch's CPU kernels fuse LayerNorm, softmax and attention, but not RMSNorm, SwiGLU's
silu(gate) * up, rotary embeddings, a cross-entropy that never materialises the logits, or an
attention backward for short sequences. Eagerly each of those is several passes over memory with
float32 temporaries; compiled alone, inductor fuses each into one loop (timings: docs/model.md).

`CompiledKernel(fn)` runs `fn` through torch.compile the first time it is called on a CPU tensor
(once per shape), and plain `fn` when there is no C++ compiler, on other devices, inside a model
that is itself being compiled (then `fn` is traced with it), and for tensors too small for the
seconds of compiling to pay off (tiny test models). If compiling the forward fails (a broken C++
toolchain), it warns once and runs `fn`; the backward is compiled at the first backward pass,
outside this guard. Layers use kernels only while training (`training_only`); inference keeps the
plain ops, whose shapes change at every decoding step.
"""

from __future__ import annotations

import warnings

import torch

from decoderlm.compile_support import can_compile


# Below this many elements in the first argument, run eagerly: at 8 x 256 tokens of width 512
# (1M elements) the kernels save milliseconds per call; a 16-wide toy model would only wait for
# the compiler.
MIN_ELEMENTS = 1 << 17


class CompiledKernel:
    """`fn`, compiled where that pays. training_only: compiled only when gradients flow through
    the first argument (model layers); the kernels that already run inside a training-only
    autograd function leave it False."""

    def __init__(self, fn, training_only: bool = False):
        self.fn = fn
        self.training_only = training_only
        self._compiled = None
        self._failed = False
        self.__doc__ = fn.__doc__

    def __call__(self, *args):
        x = args[0]
        if (self._failed or torch.compiler.is_compiling() or x.device.type != "cpu" or x.numel() < MIN_ELEMENTS
                or (self.training_only and not training_on_cpu(x)) or not can_compile(x.device)):
            return self.fn(*args)
        # Imported here, not at the top: the compiler's modules take a second to import, and
        # decoding imports these layers without compiling them.
        from torch._dynamo.exc import TorchDynamoException
        from torch._inductor.exc import InductorError

        if self._compiled is None:
            self._compiled = torch.compile(self.fn)
        try:
            return self._compiled(*args)
        except (TorchDynamoException, InductorError, OSError) as err:  # a broken toolchain: fn is exact
            self._failed = True
            warnings.warn(f"compiling {self.fn.__name__} failed ({type(err).__name__}); "
                          "running it uncompiled", stacklevel=2)
            return self.fn(*args)


def training_on_cpu(x: torch.Tensor) -> bool:
    """Whether a kernel pays for itself here: gradients flow through `x`, on CPU."""
    return x.device.type == "cpu" and x.requires_grad and torch.is_grad_enabled()
