"""Optimisers: AdamW with decoupled weight decay on matrices only, plain Adam, and Muon.

Every parameter group carries `base_lr`; the schedule sets `lr = base_lr * factor` each step, so
one schedule drives groups whose learning rates differ (Muon's and AdamW's).
"""

from __future__ import annotations

import torch
from torch import nn

from decoderlm.config import TrainConfig
from decoderlm.errors import DecoderLMError

class OptimizerGroup:
    """Several torch optimisers stepped as one (Muon for hidden matrices + AdamW for the rest).

    Hand-written because torch has no container for optimisers; it exposes just what the loop
    uses: param_groups, step, zero_grad, state_dict and load_state_dict.
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def step(self):
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True):
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {str(i): opt.state_dict() for i, opt in enumerate(self.optimizers)}

    def load_state_dict(self, state: dict):
        if sorted(state) != [str(i) for i in range(len(self.optimizers))]:
            raise DecoderLMError("the checkpoint's optimizer state does not match train.optimizer; "
                                 "resume with the optimizer the run was started with")
        for i, opt in enumerate(self.optimizers):
            opt.load_state_dict(state[str(i)])


def _adam_kwargs(config: TrainConfig, device: torch.device, distributed_tensors: bool) -> dict:
    kwargs = {"betas": tuple(config.betas), "eps": config.eps}
    # The fused kernels are the fastest path on CUDA and CPU; FSDP's sharded DTensors take foreach.
    if device.type in ("cuda", "cpu") and not distributed_tensors:
        kwargs["fused"] = True
    else:
        kwargs["foreach"] = True
    return kwargs


def _decay_groups(params: list[tuple[str, nn.Parameter]], config: TrainConfig) -> list[dict]:
    """Weight decay on matrices (>= 2-D: linear weights, embeddings, experts); none on biases and
    norm gains, which decay would only pull towards zero."""
    decay = [p for _, p in params if p.dim() >= 2]
    no_decay = [p for _, p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay, "base_lr": config.lr},
              {"params": no_decay, "weight_decay": 0.0, "base_lr": config.lr}]
    return [g for g in groups if g["params"]]


def is_muon_param(name: str, p: nn.Parameter) -> bool:
    """Muon orthogonalises 2-D updates: hidden matrices only, not embeddings, the head, the MoE
    router or 3-D expert stacks (torch's Muon accepts 2-D parameters only)."""
    return p.dim() == 2 and name.startswith("blocks.") and "router" not in name


def build_optimizer(model: nn.Module, config: TrainConfig, device: torch.device,
                    distributed_tensors: bool = False) -> OptimizerGroup:
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    adam = _adam_kwargs(config, device, distributed_tensors)
    if config.optimizer == "adam":
        groups = [{"params": [p for _, p in params], "base_lr": config.lr}]
        return OptimizerGroup([torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay, **adam)])
    if config.optimizer == "adamw":
        return OptimizerGroup([torch.optim.AdamW(_decay_groups(params, config), lr=config.lr, **adam)])

    # train.preflight has checked that torch has Muon and that it is not asked to shard (FSDP).
    hidden = [p for n, p in params if is_muon_param(n, p)]
    rest = [(n, p) for n, p in params if not is_muon_param(n, p)]
    if not hidden:
        raise DecoderLMError("train.optimizer=muon found no 2-D hidden weights in this model; use adamw")
    muon = torch.optim.Muon([{"params": hidden, "base_lr": config.muon_lr}], lr=config.muon_lr,
                            weight_decay=config.weight_decay)
    return OptimizerGroup([muon, torch.optim.AdamW(_decay_groups(rest, config), lr=config.lr, **adam)])


def set_lr(optimizer: OptimizerGroup, factor: float) -> float:
    """Apply the schedule factor to every group; returns the lr of the first group (for logs)."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return optimizer.param_groups[0]["lr"]
