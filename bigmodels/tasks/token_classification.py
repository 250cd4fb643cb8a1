"""A label per token (NER): cross-entropy that skips ignored tokens; token accuracy and entity-level F1."""

from __future__ import annotations

import torch.nn.functional as F

from ..metrics.text import get_entities
from .base import IGNORE_INDEX, Task, call

__all__ = ["TokenClassification"]


class TokenClassification(Task):
    """A label per token (NER): cross-entropy over (B, T, C) logits, skipping labels of -100 (sub-tokens
    after a word's first, special tokens, padding); token accuracy and entity-level F1 (conlleval rules)."""

    name = "token_classification"
    unit = "samples"
    metric_names = ("loss", "accuracy", "f1", "precision", "recall")

    def __init__(self, label_list: list[str] | None = None) -> None:
        self.label_list = label_list

    def loss(self, model, x, y):
        logits = call(model, x)  # (B, T, C)
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE_INDEX), logits

    def count(self, x, y):
        return int(y.shape[0])

    def update(self, sums, loss, logits, y):
        keep = y != IGNORE_INDEX  # (B, T)
        n = int(keep.sum())
        sums["loss_sum"] = sums.get("loss_sum", 0.0) + float(loss) * n
        sums["count"] = sums.get("count", 0.0) + n
        pred = logits.argmax(-1)
        sums["correct"] = sums.get("correct", 0.0) + float((pred[keep] == y[keep]).sum())
        if self.label_list:  # entity counts add up across batches (and processes)
            names = self.label_list
            gold = [[names[i] for i in row[k].tolist()] for row, k in zip(y, keep, strict=True)]
            guess = [[names[i] for i in row[k].tolist()] for row, k in zip(pred, keep, strict=True)]
            g, p = set(get_entities(gold)), set(get_entities(guess))
            for key, value in (("tp", len(g & p)), ("n_pred", len(p)), ("n_gold", len(g))):
                sums[key] = sums.get(key, 0.0) + value

    def finalize(self, sums):
        out = super().finalize(sums)
        out["accuracy"] = sums.get("correct", 0.0) / max(1.0, sums["count"])
        if "tp" in sums:
            precision = sums["tp"] / sums["n_pred"] if sums["n_pred"] else 0.0
            recall = sums["tp"] / sums["n_gold"] if sums["n_gold"] else 0.0
            out["precision"], out["recall"] = precision, recall
            out["f1"] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return out
