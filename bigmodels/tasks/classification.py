"""A label per input (an image, a text or a text pair): cross-entropy over class logits; accuracy and top-5."""

from __future__ import annotations

import torch.nn.functional as F

from ..errors import ConfigError
from ..metrics.classification import topk_correct
from .base import Task, call

__all__ = ["Classification"]


class Classification(Task):
    """Cross-entropy over class logits (B, C); accuracy and top-5 accuracy.

    Targets are int labels (B,) or, from mixup/CutMix, class probabilities (B, C) (soft cross-entropy).
    ``label_smoothing`` eps trains on ``(1 - eps) target + eps / C`` (Szegedy et al. 2016, sec. 7), for hard and
    soft targets alike, as ``F.cross_entropy(label_smoothing=eps)`` does. Metrics need hard labels: evaluate
    with a task built without smoothing (see :func:`~bigmodels.tasks.get_task`), so val loss stays plain
    cross-entropy.
    """

    unit = "samples"
    metric_names = ("loss", "accuracy", "top5_accuracy")

    def __init__(self, name: str, label_smoothing: float = 0.0) -> None:
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing={label_smoothing!r} must be in [0, 1), e.g. 0.1")
        self.name = name
        self.label_smoothing = float(label_smoothing)

    def loss(self, model, x, y):
        logits = call(model, x)  # (B, C)
        # y: (B,) int labels, or (B, C) float class probabilities
        return F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing), logits

    def count(self, x, y):
        return int(y.shape[0])

    def update(self, sums, loss, logits, y):
        if y.is_floating_point():
            raise TypeError("Classification metrics need int labels (B,), not soft targets; evaluate on hard labels")
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
