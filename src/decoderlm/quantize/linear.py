"""Weight-only quantized linear layers on torch's own CPU kernels.

`Int8Linear`: int8 weights, one scale per output channel (symmetric), through
`aten._weight_int8pack_mm`. `Int4Linear`: 4-bit weights in groups of G input columns, each group
with a scale and a zero (asymmetric, w = scale * (q - 8) + zero), through
`aten._weight_int4pack_mm_for_cpu`. Activations stay in the model's dtype; only the weights shrink.
When decoding (a few activation rows) in bf16 on a CPU with AVX-512 BF16 or AVX2, both use
decoderlm's own matrix-vector kernels instead (kernels/quantized_matvec*.cpp, built by
kernels/native.py): torch's reach half the memory bandwidth there. They read the saved layout below
as it is.

Both kernels are fast in bfloat16 only: their float32 paths are plain loops, tens of times slower
(docs/generation.md), so quantized models run in bf16 by default. torchao offers the same formats
(`Int8WeightOnlyConfig`, `Int4WeightOnlyConfig`), but in 0.18 its int8 path dequantizes the whole
matrix before an ordinary matmul (slow eagerly) and its CPU int4 path calls the same aten kernel as
here, so these thin modules use torch's kernels directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from decoderlm.kernels import native


def _finish(y: torch.Tensor, bias, shape) -> torch.Tensor:
    if bias is not None:
        y = y + bias
    return y.reshape(*shape[:-1], y.shape[-1])


class Int8Linear(nn.Module):
    """y = x @ (qweight * scales[:, None]).T + bias; qweight (out, in) int8, scales (out,)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, dtype=torch.float32, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.ones(out_features, dtype=dtype, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        w = linear.weight.detach().float()
        out = cls(linear.in_features, linear.out_features, linear.bias is not None, linear.weight.dtype, w.device)
        scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127
        out.qweight.copy_(torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8))
        out.scales.copy_(scales)
        if linear.bias is not None:
            out.bias.copy_(linear.bias.detach())
        return out

    def dequantized(self) -> torch.Tensor:
        return self.qweight.float() * self.scales.float()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if native.matvec_usable(rows, self.scales):
            y = torch.ops.decoderlm.int8_matvec(rows.contiguous(), self.qweight, self.scales)
        else:
            y = torch.ops.aten._weight_int8pack_mm(rows, self.qweight, self.scales.to(x.dtype))
        return _finish(y, self.bias, x.shape)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int4Linear(nn.Module):
    """4-bit weights in groups of `group_size` input columns.

    Saved (persistent buffers): qweight (out, in / 2) uint8, two columns per byte (even column in the
    low nibble), scales and zeros (out, in / group_size). The kernel's own packed copy is rebuilt
    from them after loading (torch's packing is internal to torch, so it never goes to disk).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False, group_size: int = 64,
                 dtype=torch.float32, device=None):
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        groups = in_features // group_size
        self.register_buffer("qweight", torch.full((out_features, in_features // 2), 0x88, dtype=torch.uint8,
                                                   device=device))
        self.register_buffer("scales", torch.zeros(out_features, groups, dtype=dtype, device=device))
        self.register_buffer("zeros", torch.zeros(out_features, groups, dtype=dtype, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None)
        self.register_buffer("packed", torch.empty(0, dtype=torch.uint8, device=device), persistent=False)
        self.register_buffer("scales_and_zeros", torch.empty(0, dtype=dtype, device=device), persistent=False)
        self._repack()
        self.register_load_state_dict_post_hook(lambda module, _incompatible: module._repack())

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, group_size: int) -> "Int4Linear":
        w = linear.weight.detach().float()
        out = cls(linear.in_features, linear.out_features, linear.bias is not None, group_size,
                  linear.weight.dtype, w.device)
        N, K = w.shape
        groups = w.view(N, K // group_size, group_size)
        low, high = groups.amin(-1), groups.amax(-1)
        scales = (high - low).clamp(min=1e-6) / 15
        q = torch.round((groups - low[..., None]) / scales[..., None]).clamp(0, 15).to(torch.uint8).view(N, K)
        out.qweight.copy_(q[:, 0::2] | (q[:, 1::2] << 4))
        out.scales.copy_(scales)
        out.zeros.copy_(low + 8 * scales)  # the kernel computes scale * (q - 8) + zero
        if linear.bias is not None:
            out.bias.copy_(linear.bias.detach())
        out._repack()
        return out

    def unpacked(self) -> torch.Tensor:
        """(out, in) int32 values 0..15."""
        q = torch.stack([self.qweight & 0xF, self.qweight >> 4], dim=-1)
        return q.view(self.out_features, self.in_features).to(torch.int32)

    def dequantized(self) -> torch.Tensor:
        q = self.unpacked().float().view(self.out_features, -1, self.group_size)
        w = self.scales.float()[..., None] * (q - 8) + self.zeros.float()[..., None]
        return w.view(self.out_features, self.in_features)

    @torch.no_grad()
    def _repack(self) -> None:
        """The kernel's layout: rows padded to a multiple of 16 (its requirement) with zero weights."""
        pad = -self.out_features % 16
        q = F.pad(self.unpacked(), (0, 0, 0, pad), value=8)
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.cpu(), 1).to(self.qweight.device)
        scales = F.pad(self.scales, (0, 0, 0, pad))
        zeros = F.pad(self.zeros, (0, 0, 0, pad))
        self.scales_and_zeros = torch.stack([scales, zeros], dim=-1).transpose(0, 1).contiguous()  # (G, N, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if self.group_size % 64 == 0 and native.matvec_usable(rows, self.scales, self.zeros):
            y = torch.ops.decoderlm.int4_matvec(rows.contiguous(), self.qweight, self.scales, self.zeros,
                                                self.group_size)
            return _finish(y, self.bias, x.shape)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, self.packed, self.group_size,
                                                       self.scales_and_zeros.to(x.dtype))
        if y.shape[-1] != self.out_features:
            y = y[:, :self.out_features]
        return _finish(y, self.bias, x.shape)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"group_size={self.group_size}, bias={self.bias is not None}")
