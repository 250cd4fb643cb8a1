"""The process group under ``torchrun`` (gloo on CPU, NCCL on GPU) and the few collectives the loop needs;
how the model is spread over the processes is :mod:`.parallel`'s business.

Logging: only rank 0 logs at INFO; the other ranks log warnings and errors only, so that a run prints each
line once. Set ``BIGMODELS_LOG_ALL_RANKS=1`` to have every rank log everything.
"""

from __future__ import annotations

import gc
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "all_reduce_mean", "all_reduce_max", "any_flag", "barrier", "cleanup",
           "LOG_ALL_RANKS_ENV"]

LOG_ALL_RANKS_ENV = "BIGMODELS_LOG_ALL_RANKS"  # "1": every rank logs at INFO, not only rank 0


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (a no-op without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if not info.is_main and os.environ.get(LOG_ALL_RANKS_ENV, "").lower() not in ("1", "true", "yes"):
        logging.getLogger("bigmodels").setLevel(logging.WARNING)  # rank 0 speaks for the run
    return info


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if not info.enabled:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / info.world_size


def all_reduce_max(value: int, info: DistInfo, device: torch.device) -> int:
    """The largest ``value`` over all ranks (every rank gets it)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def any_flag(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any rank (keeps stop decisions in step)."""
    return bool(all_reduce_max(int(flag), info, device))


def barrier(info: DistInfo, device: torch.device) -> None:
    """Wait until every rank gets here (e.g. until rank 0 has written a checkpoint the others will read)."""
    all_reduce_max(0, info, device)


def cleanup(info: DistInfo) -> None:
    """Destroy the process group with nothing left that refers to it.

    Collecting garbage before and after matters: a DDP reducer or a finished work object that is
    freed only at interpreter exit takes the backend's threads down with the interpreter, which
    aborts the process now and then (seen with gloo, torch 2.13).
    """
    if info.enabled and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
        gc.collect()
