"""torchrun / DDP / FSDP2 set-up, applied to the model from outside (the model file never changes).

`torchrun --nproc_per_node=N -m decoderlm train ...` sets RANK, WORLD_SIZE and LOCAL_RANK; without
them training runs in one process and every helper here is a no-op.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from decoderlm.errors import DecoderLMError
from decoderlm.train.device import choose_device


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup() -> Distributed:
    """Read torchrun's environment, pick the device, and join the process group (gloo on CPU,
    nccl on CUDA)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = choose_device(local_rank)
    if world_size > 1 and not dist.is_initialized():
        if not dist.is_available():
            raise DecoderLMError("this torch build has no torch.distributed; run in one process")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def teardown(state: Distributed) -> None:
    if state.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, state: Distributed, parallel: str) -> nn.Module:
    """DDP (a full replica per process, gradients averaged) or FSDP2 (`fully_shard`: parameters,
    gradients and optimizer state sharded across processes, each transformer block its own unit).
    `model` is the DecoderLM that computes; both hook its forward, which returns the loss."""
    if not state.enabled:
        return model
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [state.device.index] if state.device.type == "cuda" else None
        # Buffers (position tables) are constants: no need to broadcast them every forward.
        no_sync = ({"forward_sync_buffers": False}
                   if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                   else {"broadcast_buffers": False})  # the older name, deprecated in newer torch
        return DistributedDataParallel(model, device_ids=ids, **no_sync)
    from torch.distributed.fsdp import fully_shard

    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    return model


def all_reduce_sum(values: torch.Tensor, state: Distributed) -> torch.Tensor:
    if state.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast_flag(flag: bool, state: Distributed) -> bool:
    """Rank 0's decision (e.g. the time budget ran out) for every rank, so all stop together."""
    if not state.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=state.device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def barrier(state: Distributed) -> None:
    if state.enabled:
        dist.barrier()


# -- full (unsharded) state for checkpoints -------------------------------------------------------
def full_model_state(model: nn.Module, wrapped: nn.Module, sharded: bool) -> dict[str, torch.Tensor]:
    """The complete state dict on CPU of `model`, the fp32 DecoderLM the optimizer updates. Under
    FSDP it is gathered from every shard of `wrapped` (the sharded model): all ranks must call,
    rank 0 receives it."""
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def full_optimizer_state(model: nn.Module, optimizer, sharded: bool) -> dict:
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        opt = optimizer.optimizers[0]
        return {"0": get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True,
                                                                                   cpu_offload=True))}
    return optimizer.state_dict()


def load_optimizer_state(model: nn.Module, optimizer, state: dict, sharded: bool) -> None:
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer.optimizers[0], state["0"],
                                 options=StateDictOptions(full_state_dict=True))
        return
    optimizer.load_state_dict(state)
