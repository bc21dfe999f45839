"""Normalisation layers: LayerNorm and RMSNorm (torch's own modules), or none."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from decoderlm.config import ModelConfig
from decoderlm.model.compiled_kernels import CompiledKernel


_rms_norm = CompiledKernel(F.rms_norm, training_only=True)


class RMSNorm(nn.RMSNorm):
    """torch's RMSNorm; while training on CPU, where torch has no fused RMSNorm kernel, a compiled
    one (see compiled_kernels.py). The same parameters and results either way."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _rms_norm(x, self.normalized_shape, self.weight, self.eps)


def build_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.d_model, eps=config.norm_eps)
    if config.norm == "layernorm":
        return nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.norm_bias)
    return nn.Identity()
