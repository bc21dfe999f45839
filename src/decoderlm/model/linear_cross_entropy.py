"""The output head and the cross-entropy in one pass over chunks of rows.

The plain way, `cross_entropy(lm_head(h).float(), y)`, materialises the (tokens, vocab) logits in
float32 (64 MiB at 2,048 tokens x 8,192 words), then walks that array again for the softmax, for
its gradient and for the casts between them. Arrays that large are also handed back to the
operating system after every step and page-faulted in again on the next (glibc serves blocks
over 32 MiB with mmap). Measured on this project's reference CPU, that path was about a quarter
of an eager training step.

Here the head is applied to a few hundred rows at a time; each chunk's loss and its gradients
(softmax minus one-hot, times the head's weight) are computed at once while the chunk is fresh,
so the full logits never exist and the backward pass only rescales the saved gradients (the
approach of Liger-Kernel's fused linear cross-entropy). torch has no such op, so it is written
by hand. The chunk gradients of the head's weight are summed in the compute dtype (bf16 in mixed
precision), as the one big matmul of the plain way also rounds its result to it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from decoderlm.model.compiled_kernels import CompiledKernel

CHUNK_BYTES = 16 << 20  # float32 logits per chunk: well under glibc's 32 MiB mmap threshold


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """mean over non-ignored rows of cross_entropy(hidden @ weight.T + bias, targets), in float32.

    hidden (N, C), weight (V, C), bias (V,) or None, targets (N,). Rows whose target is
    `ignore_index` add nothing; if every row is ignored the loss is 0.
    """
    return _LinearCrossEntropy.apply(hidden, weight, bias, targets, ignore_index)


def chunk_rows(vocab_size: int) -> int:
    return max(1, CHUNK_BYTES // (4 * vocab_size))


def chunk_loss_and_grad(logits: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor):
    """One chunk: logits (n, V) in the compute dtype, targets (n, 1), scale (n, 1) = d(mean)/d(row).
    Returns this chunk's share of the mean loss and d loss / d logits (softmax minus one-hot,
    scaled) in the compute dtype. Element-wise only, so inductor fuses it into two passes."""
    logits32 = logits.float()
    logsumexp = torch.logsumexp(logits32, dim=-1, keepdim=True)
    loss = ((logsumexp - logits32.gather(1, targets)) * scale).sum()
    one_hot = torch.arange(logits.shape[1], device=logits.device) == targets
    grad = (torch.exp(logits32 - logsumexp) - one_hot.float()) * scale
    return loss, grad.to(logits.dtype)


_chunk_kernel = CompiledKernel(chunk_loss_and_grad)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, ignore_index):
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        want_hidden, want_weight, want_bias = ctx.needs_input_grad[:3]
        want_any = want_hidden or want_weight or want_bias
        with torch.autocast(device, enabled=False):
            h_all, w = hidden.to(dtype), weight.to(dtype)
            b = bias.to(dtype) if bias is not None else None
            valid = targets != ignore_index
            count = valid.sum().clamp(min=1)
            safe_targets = torch.where(valid, targets, 0).unsqueeze(1)
            scale = (valid.float() / count).unsqueeze(1)  # d(mean loss)/d(row loss)

            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_hidden = torch.empty_like(h_all) if want_hidden else None
            grad_weight = torch.zeros_like(w) if want_weight else None
            grad_bias = torch.zeros(w.shape[0], dtype=torch.float32, device=hidden.device) if want_bias else None
            step = chunk_rows(w.shape[0])
            for start in range(0, h_all.shape[0], step):
                rows = slice(start, start + step)
                h = h_all[rows]
                logits = F.linear(h, w, b)  # (n, V) in the compute dtype
                if not want_any:  # evaluation: the loss only
                    logits = logits.float()
                    row_loss = torch.logsumexp(logits, dim=-1, keepdim=True) - logits.gather(1, safe_targets[rows])
                    total += (row_loss * scale[rows]).sum()
                    continue
                loss, grad_logits = _chunk_kernel(logits, safe_targets[rows], scale[rows])
                total += loss
                if want_bias:
                    grad_bias += grad_logits.float().sum(0)
                if want_hidden:
                    torch.mm(grad_logits, w, out=grad_hidden[rows])
                if want_weight:
                    grad_weight.addmm_(grad_logits.t(), h)
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
