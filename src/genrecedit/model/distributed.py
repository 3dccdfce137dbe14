"""Several processes, one job (``torchrun``): the process group from the environment, and the few collectives the
training loop and the key statistics need. In a single process every helper is a no-op, so one code path serves both.

``torchrun --nproc_per_node=N`` sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` and the rendezvous address; with
``WORLD_SIZE`` > 1 ``init_from_env`` joins the group (NCCL for CUDA devices, gloo on the CPU) and places a CUDA
process on ``cuda:LOCAL_RANK``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job: rank of world (0 of 1 alone) and the device it computes on."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files, bars and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device: str = "cpu") -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment (once; later calls reuse it), or a
    single-process context when ``WORLD_SIZE`` is unset or 1. ``device``: the configured device; ``cuda`` becomes
    ``cuda:LOCAL_RANK`` in a multi-process job."""
    world = env_world_size()
    if world <= 1:
        return DistContext(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.device(device).type == "cuda"
    if cuda:
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    if dist.get_world_size() != world:
        raise RuntimeError(f"WORLD_SIZE is {world} but the process group has {dist.get_world_size()} processes")
    return DistContext(rank, world, local_rank, device)


def current(device: str = "cpu") -> DistContext:
    """The context of a process group already joined (single process when none) for work on ``device`` (``cuda``
    becomes ``cuda:LOCAL_RANK`` in a multi-process job, as in ``init_from_env``)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.device(device).type == "cuda":
            device = f"cuda:{local_rank}"
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device)
    return DistContext(device=device)


def is_main_process() -> bool:
    return current().is_main


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier(device_ids=[ctx.local_rank]) if torch.device(ctx.device).type == "cuda" else dist.barrier()


def all_reduce_sum(ctx: DistContext, tensor: torch.Tensor) -> torch.Tensor:
    """The elementwise sum of ``tensor`` over all processes (in place; returned). Alone: ``tensor`` unchanged. A tensor
    off the backend's device (a CPU tensor under NCCL) is reduced through a copy on it."""
    if ctx.distributed:
        on = tensor.to(_collective_device(ctx))
        dist.all_reduce(on, op=dist.ReduceOp.SUM)
        if on is not tensor:
            tensor.copy_(on)
    return tensor


def all_reduce_max(ctx: DistContext, value: float) -> float:
    """The largest of every process's ``value`` (e.g. elapsed time, so that all stop on the same epoch)."""
    if not ctx.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_collective_device(ctx))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def _collective_device(ctx: DistContext) -> torch.device:
    """NCCL reduces CUDA tensors only; gloo CPU ones."""
    return torch.device(ctx.device) if torch.device(ctx.device).type == "cuda" else torch.device("cpu")
