"""What every task shares: the :class:`Task` interface, the ignored-target index, and which way a metric improves.

A task turns a batch ``(x, y)`` into a loss and running metric sums; the batch input ``x`` is what the model
contract's :func:`~bigmodels.models._contract.call` takes (a tensor, or a dict of keyword arguments).
"""

from __future__ import annotations

import torch
from torch import nn

from ..models._contract import call

__all__ = ["Task", "IGNORE_INDEX", "better", "call"]

IGNORE_INDEX = -100  # targets that take no part in a loss (padding, sub-tokens, unmasked tokens)


class Task:
    """A loss and its metrics over batches: ``loss`` per batch, ``update`` running sums, ``finalize`` them.

    The sums are plain floats that add up across batches and processes (the evaluator all-reduces them).
    """

    name: str = ""
    unit: str = "samples"  # what throughput counts
    metric_names: tuple[str, ...] = ("loss",)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mean loss, logits); logits may be None while training (a loss computed without them)."""
        raise NotImplementedError

    def count(self, x: torch.Tensor, y: torch.Tensor) -> int:
        """Items in a batch, for throughput."""
        return int(y.numel())

    def update(self, sums: dict[str, float], loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        """Add a batch to the running sums (loss is the batch mean)."""
        n = y.numel()
        sums["loss_sum"] = sums.get("loss_sum", 0.0) + float(loss) * n
        sums["count"] = sums.get("count", 0.0) + n

    def finalize(self, sums: dict[str, float]) -> dict[str, float]:
        return {"loss": sums["loss_sum"] / max(1.0, sums["count"])}


def better(metric: str, new: float, old: float | None) -> bool:
    """Is ``new`` an improvement of ``metric`` over ``old``? Losses go down, accuracies go up.

    >>> better("accuracy", 0.9, 0.8), better("loss", 0.9, 0.8)
    (True, False)
    """
    if old is None:
        return True
    higher = "acc" in metric or metric.endswith("f1")
    return new > old if higher else new < old
