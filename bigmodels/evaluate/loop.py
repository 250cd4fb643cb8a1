"""The evaluation loop: a model, a dataset and a task -> metrics (sharded over processes when distributed)."""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from ..data.batching import iterate_batches, to_device
from ..errors import ConfigError
from ..tasks import Task

__all__ = ["evaluate_model", "autocast"]


def autocast(device: torch.device, precision: str):
    """Mixed-precision context for ``precision`` on ``device`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    dataset: Dataset,
    task: Task,
    *,
    transform=None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    num_workers: int = 0,
    limit: int | None = None,
) -> dict[str, float]:
    """Mean loss and the task's metrics over ``dataset`` (its first ``limit`` items when given).

    Under ``torch.distributed`` each process evaluates a contiguous shard and the sums are all-reduced.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} must be a whole number >= 1")
    if limit is not None and limit < 0:
        raise ConfigError(f"limit={limit!r} must be >= 0 (or None for the whole dataset)")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    n = len(dataset) if limit is None else min(limit, len(dataset))
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    lo, hi = n * rank // world, n * (rank + 1) // world
    batches = (range(i, min(i + batch_size, hi)) for i in range(lo, hi, batch_size))
    sums: dict[str, float] = {}
    # a data set that randomises its batches (masked LM) gets the same draws at every evaluation
    generator = getattr(dataset, "generator", None)
    saved = generator.get_state() if isinstance(generator, torch.Generator) else None
    try:
        for x, y in iterate_batches(dataset, batches, num_workers):
            x, y = to_device(x, device), to_device(y, device)
            if transform is not None:
                x = transform(x)
            with autocast(device, precision):
                loss, logits = task.loss(model, x, y)
            task.update(sums, loss, _float(logits), y)
    finally:
        model.train(was_training)
        if saved is not None:
            generator.set_state(saved)
    if world > 1:
        keys = sorted(sums) if sums else []
        keys = _agree_on_keys(keys)
        t = torch.tensor([sums.get(k, 0.0) for k in keys], dtype=torch.float64)
        dist.all_reduce(t)
        sums = dict(zip(keys, t.tolist(), strict=True))
    if not sums.get("count"):
        return {}
    return task.finalize(sums)


def _float(out):
    return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()


def _agree_on_keys(keys: list[str]) -> list[str]:
    # every rank must reduce the same vector, even one whose shard was empty
    gathered: list[list[str]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, keys)
    return sorted(set().union(*gathered))
