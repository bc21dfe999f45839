"""The output head and the cross-entropy in one pass over chunks of rows.

The plain way, `cross_entropy(lm_head(h).float(), y)`, materialises the (tokens, vocab) logits in
float32, then walks that array again for the softmax, for its gradient and for the casts between
them. Arrays that large are also handed back to the operating system after every step and
page-faulted in again on the next (glibc serves blocks over 32 MiB with mmap).

Here the head is applied to a few hundred rows at a time; each chunk's loss and its gradients
(softmax minus one-hot, times the head's weight) are computed at once while the chunk is fresh,
so the full logits never exist and the backward pass only rescales the saved gradients (the
approach of Liger-Kernel's fused linear cross-entropy). torch has no such op, so it is written
by hand. The head's weight gradient is summed over chunks in float32 and rounded once.

The chunks pay on CPU in eager mode, where they were measured (docs/model.md). Inside a compiled
model, inductor fuses the plain head + cross-entropy itself (measured as fast, and a Python loop
over chunks would be unrolled into the graph), and other devices were not measured: both take the
plain path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from decoderlm.kernels.compiled import CompiledKernel

CHUNK_BYTES = 16 << 20  # float32 logits per chunk: well under glibc's 32 MiB mmap threshold
MAX_CHUNKS = 8  # large vocabularies: bigger chunks rather than many small matmuls


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """mean over non-ignored rows of cross_entropy(hidden @ weight.T + bias, targets), in float32.

    hidden (N, C), weight (V, C), bias (V,) or None, targets (N,). Rows whose target is
    `ignore_index` add nothing; if every row is ignored the loss is 0. Under autocast the head runs
    in the autocast dtype, as nn.Linear would.
    """
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias)):
        return _LinearCrossEntropy.apply(hidden, weight, bias, targets, ignore_index)
    dtype = _compute_dtype(hidden)
    with torch.autocast(hidden.device.type, enabled=False):  # evaluation: the loss alone
        rows = _Rows(hidden, weight, bias, targets, ignore_index, dtype)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for chunk in rows.chunks():
            logits = F.linear(rows.hidden[chunk], rows.weight, rows.bias).float()
            row_loss = torch.logsumexp(logits, dim=-1, keepdim=True) - logits.gather(1, rows.targets[chunk])
            total += (row_loss * rows.scale[chunk]).sum()
        return total


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    """The autocast dtype if autocast is on (as nn.Linear would compute), else the input's."""
    device = hidden.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype


def row_chunks(n_rows: int, vocab_size: int) -> list[slice]:
    """The chunks of rows: CHUNK_BYTES of float32 logits each, or bigger to stay within MAX_CHUNKS."""
    step = max(1, CHUNK_BYTES // (4 * vocab_size), -(-n_rows // MAX_CHUNKS))
    return [slice(start, start + step) for start in range(0, n_rows, step)]


class _Rows:
    """The inputs in the compute dtype, the targets made safe to gather, and each row's weight in
    the mean (0 for ignored rows)."""

    def __init__(self, hidden, weight, bias, targets, ignore_index, dtype):
        self.dtype = dtype
        self.hidden, self.weight = hidden.to(self.dtype), weight.to(self.dtype)
        self.bias = bias.to(self.dtype) if bias is not None else None
        valid = targets != ignore_index
        self.targets = torch.where(valid, targets, 0).unsqueeze(1)  # (N, 1)
        self.scale = (valid.float() / valid.sum().clamp(min=1)).unsqueeze(1)  # d(mean loss) / d(row loss)

    def chunks(self):
        return row_chunks(self.hidden.shape[0], self.weight.shape[0])


def chunk_loss_and_grad(logits: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor):
    """One chunk: logits (n, V) in the compute dtype, targets (n, 1), scale (n, 1) = d(mean)/d(row).
    Returns this chunk's share of the mean loss and d loss / d logits (softmax minus one-hot,
    scaled) in the compute dtype. Element-wise only, so inductor fuses it into two passes."""
    logits32 = logits.float()
    logsumexp = torch.logsumexp(logits32, dim=-1, keepdim=True)
    loss = ((logsumexp - logits32.gather(1, targets)) * scale).sum()
    grad = (torch.exp(logits32 - logsumexp) * scale).scatter_add(1, targets, -scale)  # minus the one-hot
    return loss, grad.to(logits.dtype)


chunk_kernel = CompiledKernel(chunk_loss_and_grad)


class _LinearCrossEntropy(torch.autograd.Function):
    """Forward computes the loss and, chunk by chunk, the gradients; backward rescales them."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, ignore_index):
        want_hidden, want_weight, want_bias = ctx.needs_input_grad[:3]
        dtype = _compute_dtype(hidden)
        with torch.autocast(hidden.device.type, enabled=False):
            rows = _Rows(hidden, weight, bias, targets, ignore_index, dtype)
            w = rows.weight
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_hidden = torch.empty_like(rows.hidden) if want_hidden else None
            grad_weight = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if want_weight else None
            grad_bias = torch.zeros(w.shape[0], dtype=torch.float32, device=hidden.device) if want_bias else None
            for chunk in rows.chunks():
                h = rows.hidden[chunk]
                logits = F.linear(h, w, rows.bias)  # (n, V) in the compute dtype
                loss, grad_logits = chunk_kernel(logits, rows.targets[chunk], rows.scale[chunk])
                total += loss
                if want_bias:
                    grad_bias += grad_logits.float().sum(0)
                if want_hidden:
                    torch.mm(grad_logits, w, out=grad_hidden[chunk])
                if want_weight:  # summed in float32 (CPU matmuls cannot write bf16 products into it)
                    grad_weight += torch.mm(grad_logits.t(), h)
        ctx.save_for_backward(
            *(x if x is not None else torch.empty(0) for x in (grad_hidden, grad_weight, grad_bias)))
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        want_hidden, want_weight, want_bias = ctx.needs_input_grad[:3]
        hidden_dtype, weight_dtype, bias_dtype = ctx.dtypes
        return ((grad_hidden * grad_loss).to(hidden_dtype) if want_hidden else None,
                (grad_weight * grad_loss).to(weight_dtype) if want_weight else None,
                (grad_bias * grad_loss).to(bias_dtype) if want_bias else None,
                None, None)
