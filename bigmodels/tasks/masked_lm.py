"""BERT pretraining: masked-token cross-entropy, plus next-sentence prediction when the model has that head."""

from __future__ import annotations

import torch.nn.functional as F

from .base import IGNORE_INDEX, Task, call

__all__ = ["MaskedLanguageModeling"]


class MaskedLanguageModeling(Task):
    """BERT pretraining: masked-token cross-entropy (+ next-sentence prediction when the model has the
    NSP head); targets ``{"labels": (B, T) with -100 where unmasked, "next_sentence_label": (B,)}``."""

    name = "masked_language_modeling"
    unit = "samples"
    metric_names = ("loss", "mlm_loss", "mlm_accuracy", "nsp_accuracy")

    def loss(self, model, x, y):
        out = call(model, x)
        mlm, nsp = out if isinstance(out, tuple) else (out, None)  # (B, T, V), (B, 2)
        loss = F.cross_entropy(mlm.flatten(0, 1).float(), y["labels"].flatten(), ignore_index=IGNORE_INDEX)
        if nsp is not None and "next_sentence_label" in y:
            loss = loss + F.cross_entropy(nsp.float(), y["next_sentence_label"])
        return loss, out

    def count(self, x, y):
        return int(y["labels"].shape[0])

    def update(self, sums, loss, logits, y):
        mlm, nsp = logits if isinstance(logits, tuple) else (logits, None)
        labels = y["labels"]
        keep = labels != IGNORE_INDEX
        n = int(keep.sum())
        mlm_loss = F.cross_entropy(mlm[keep].float(), labels[keep], reduction="sum") if n else mlm.new_zeros(())
        b = labels.shape[0]
        for key, value in (("loss_sum", float(loss) * b), ("count", b), ("mlm_sum", float(mlm_loss)), ("masked", n),
                           ("mlm_correct", float((mlm[keep].argmax(-1) == labels[keep]).sum()))):
            sums[key] = sums.get(key, 0.0) + value
        if nsp is not None and "next_sentence_label" in y:
            correct = float((nsp.argmax(-1) == y["next_sentence_label"]).sum())
            sums["nsp_correct"] = sums.get("nsp_correct", 0.0) + correct

    def finalize(self, sums):
        out = super().finalize(sums)
        out["mlm_loss"] = sums["mlm_sum"] / max(1.0, sums["masked"])
        out["mlm_accuracy"] = sums["mlm_correct"] / max(1.0, sums["masked"])
        if "nsp_correct" in sums:
            out["nsp_accuracy"] = sums["nsp_correct"] / max(1.0, sums["count"])
        return out
