"""Sequence to sequence (translation) with teacher forcing: per-token cross-entropy, perplexity, token accuracy."""

from __future__ import annotations

import torch.nn.functional as F

from ..errors import ConfigError
from ..metrics.classification import perplexity
from .base import IGNORE_INDEX, Task, call

__all__ = ["Seq2Seq"]


class Seq2Seq(Task):
    """Sequence-to-sequence (translation) with teacher forcing: the model reads ``x`` = {input_ids,
    attention_mask, decoder_input_ids} and returns (B, T, V) logits for labels ``y`` (B, T) that hold -100 on
    padding. Token-level cross-entropy over the real labels, with ``label_smoothing`` eps as in Vaswani et al.
    2017 (sec. 5.4) and ``F.cross_entropy(label_smoothing=eps)``; metrics are per target token: loss,
    perplexity and teacher-forced token accuracy. Throughput counts target tokens."""

    name = "translation"
    unit = "tokens"
    metric_names = ("loss", "perplexity", "token_accuracy")

    def __init__(self, label_smoothing: float = 0.0) -> None:
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing={label_smoothing!r} must be in [0, 1), e.g. 0.1")
        self.label_smoothing = float(label_smoothing)

    def loss(self, model, x, y):
        logits = call(model, x)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE_INDEX,
                               label_smoothing=self.label_smoothing)
        return loss, logits

    def count(self, x, y):
        return int((y != IGNORE_INDEX).sum())

    def update(self, sums, loss, logits, y):
        keep = y != IGNORE_INDEX  # (B, T)
        n = int(keep.sum())
        correct = float((logits.argmax(-1)[keep] == y[keep]).sum())
        for key, value in (("loss_sum", float(loss) * n), ("count", n), ("correct", correct)):
            sums[key] = sums.get(key, 0.0) + value

    def finalize(self, sums):
        out = super().finalize(sums)
        out["perplexity"] = perplexity(out["loss"])
        out["token_accuracy"] = sums.get("correct", 0.0) / max(1.0, sums["count"])
        return out
