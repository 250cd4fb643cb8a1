"""What each task feeds a model, the loss it trains on and the metrics it reports.

The trainer and the evaluator know tasks, not model families: a task turns a batch ``(x, y)`` into a loss
and running metric sums.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .evaluate.metrics import bits_per_token, perplexity, topk_correct

__all__ = ["Task", "Classification", "LanguageModeling", "get_task", "better", "metric_dict"]


def call(model: nn.Module, x):
    """Run ``model`` on a batch input: a tensor, or a dict of named inputs (text: input_ids, attention_mask, ...)."""
    return model(**x) if isinstance(x, dict) else model(x)


class Task:
    name: str = ""
    unit: str = "samples"  # what throughput counts
    primary: str = "loss"  # the headline metric
    higher_is_better: bool = False
    metric_names: tuple[str, ...] = ("loss",)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean loss, logits)."""
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


class Classification(Task):
    """Cross-entropy over class logits (B, C); accuracy and top-5 accuracy."""

    unit = "samples"
    primary = "accuracy"
    higher_is_better = True
    metric_names = ("loss", "accuracy", "top5_accuracy")

    def __init__(self, name: str) -> None:
        self.name = name

    def loss(self, model, x, y):
        logits = call(model, x)  # (B, C)
        return F.cross_entropy(logits.float(), y), logits

    def update(self, sums, loss, logits, y):
        super().update(sums, loss, logits, y)
        sums["correct"] = sums.get("correct", 0.0) + topk_correct(logits, y, 1)
        if logits.size(-1) > 5:
            sums["correct5"] = sums.get("correct5", 0.0) + topk_correct(logits, y, 5)

    def finalize(self, sums):
        out = super().finalize(sums)
        out["accuracy"] = sums.get("correct", 0.0) / max(1.0, sums["count"])
        if "correct5" in sums:
            out["top5_accuracy"] = sums["correct5"] / max(1.0, sums["count"])
        return out


class LanguageModeling(Task):
    """Next-token cross-entropy over (B, T, V) logits; perplexity and bits per token."""

    name = "language_modeling"
    unit = "tokens"
    primary = "loss"
    metric_names = ("loss", "perplexity", "bits_per_token")

    def loss(self, model, x, y):
        logits = call(model, x)  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten()), logits

    def finalize(self, sums):
        out = super().finalize(sums)
        out["perplexity"] = perplexity(out["loss"])
        out["bits_per_token"] = bits_per_token(out["loss"])
        return out


_TASKS: dict[str, Task] = {
    "image_classification": Classification("image_classification"),
    "sequence_classification": Classification("sequence_classification"),
    "language_modeling": LanguageModeling(),
}


def get_task(name: str) -> Task:
    if name not in _TASKS:
        raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(_TASKS)}")
    return _TASKS[name]


def better(task: Task, metric: str, new: float, old: float | None) -> bool:
    """Is ``new`` an improvement of ``metric`` over ``old``? Losses go down, accuracies go up."""
    if old is None:
        return True
    higher = "acc" in metric or metric.endswith("f1")
    return new > old if higher else new < old


def metric_dict(prefix: str, metrics: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}_{k}": v for k, v in metrics.items()}
