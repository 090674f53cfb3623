"""Multi-process helpers. DDP is detected from the environment that `torchrun` sets.

    torchrun --nproc_per_node=8 -m pointsup.train --config ...

sets RANK, WORLD_SIZE and LOCAL_RANK for every process (and MASTER_ADDR / MASTER_PORT).
Without them everything here degrades to the single-process case, so the training loop
calls these functions unconditionally.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def get_rank() -> int:
    return int(os.environ.get("RANK", 0))


def get_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def resolve_device(name: str) -> torch.device:
    """"" = cuda when available, else cpu; a bare "cuda" becomes this process's LOCAL_RANK GPU."""
    if not name:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", get_local_rank())
    return device


def is_main_process() -> bool:
    return get_rank() == 0


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init_distributed(device: torch.device) -> None:
    """Join the process group when launched with WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU)."""
    if get_world_size() <= 1 or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=get_rank(), world_size=get_world_size())


def destroy_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def reduce_loss_dict(losses: dict[str, Tensor]) -> dict[str, float]:
    """Average scalar losses over all processes; returns python floats (on every rank).

    One all_reduce of a stacked (L,) tensor, so it costs a single collective. The loop calls
    it only at log steps: every other iteration runs without this synchronisation.
    """
    names = sorted(losses)
    values = torch.stack([losses[k].detach().float() for k in names])  # (L,)
    if is_distributed():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= dist.get_world_size()
    return dict(zip(names, values.tolist()))


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj` (any picklable value), in rank order, on every rank."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def gather_objects(obj: Any) -> list[Any] | None:
    """Every rank's `obj` in rank order on rank 0; None on the other ranks."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered
