"""Data parallelism: how the model being trained is spread over the processes that ``torchrun`` starts.

The trainer talks to one small interface, :class:`DataParallel`, and never to a wrapper class itself:

- ``wrap(model)``: the module to run forward and backward through (gradients are reduced over processes);
- ``no_sync(wrapped)``: a context in which a backward pass skips that reduction (the first micro-batches of a
  gradient accumulation; the last one reduces the sum);
- ``unwrap(wrapped)``: the plain model, whose state dict is saved, evaluated and returned to the user;
- ``teardown()``: leave the process group, once the caller has dropped its wrapped module.

:class:`SingleProcess` (one process: nothing to do) and :class:`DDP` (``DistributedDataParallel``: a full
replica per process, gradients all-reduced) implement it; a sharded strategy (FSDP2's ``fully_shard``) is a
third implementation of the same four methods, chosen in :func:`data_parallel`.

    >>> import torch
    >>> from bigmodels.train.distributed import DistInfo
    >>> strategy = data_parallel(DistInfo(), torch.device("cpu"))    # one process
    >>> model = torch.nn.Linear(4, 2)
    >>> strategy.unwrap(strategy.wrap(model)) is model
    True
"""

from __future__ import annotations

import abc
import contextlib
from contextlib import AbstractContextManager

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .distributed import DistInfo, cleanup

__all__ = ["DataParallel", "SingleProcess", "DDP", "data_parallel"]


class DataParallel(abc.ABC):
    """The interface the trainer uses (see the module docstring); one subclass per strategy."""

    name: str

    def __init__(self, info: DistInfo, device: torch.device) -> None:
        self.info = info
        self.device = device

    @abc.abstractmethod
    def wrap(self, model: nn.Module) -> nn.Module:
        """The module that trains: forward and backward run through it."""

    @abc.abstractmethod
    def no_sync(self, wrapped: nn.Module) -> AbstractContextManager:
        """A context whose backward passes accumulate local gradients without reducing them."""

    @abc.abstractmethod
    def unwrap(self, wrapped: nn.Module) -> nn.Module:
        """The plain model inside ``wrapped`` (what is saved, evaluated and handed back)."""

    def teardown(self) -> None:
        """Leave the process group; call once, when training and evaluation are done.

        Drop every reference to the wrapped module first: while a DDP wrapper (or anything holding its reducer)
        lives, the gloo worker threads outlive ``destroy_process_group`` and the process can abort at exit with
        "terminate called without an active exception"."""
        cleanup(self.info)


class SingleProcess(DataParallel):
    """One process: the model trains as it is."""

    name = "single"

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def no_sync(self, wrapped: nn.Module) -> AbstractContextManager:
        return contextlib.nullcontext()

    def unwrap(self, wrapped: nn.Module) -> nn.Module:
        return wrapped


class DDP(DataParallel):
    """``DistributedDataParallel``: every process holds the whole model; gradients are all-reduced (averaged)
    during backward, so each process applies the same update."""

    name = "ddp"

    def wrap(self, model: nn.Module) -> nn.Module:
        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def no_sync(self, wrapped: nn.Module) -> AbstractContextManager:
        return wrapped.no_sync()

    def unwrap(self, wrapped: nn.Module) -> nn.Module:
        return wrapped.module if isinstance(wrapped, DistributedDataParallel) else wrapped


def data_parallel(info: DistInfo, device: torch.device) -> DataParallel:
    """The strategy for this process group: :class:`DDP` over several processes, else :class:`SingleProcess`."""
    return DDP(info, device) if info.enabled else SingleProcess(info, device)
