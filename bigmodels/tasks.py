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
from .metrics.classification import bits_per_token, perplexity, topk_correct
from .metrics.text import get_entities
from .nn.losses import chunked_cross_entropy

IGNORE_INDEX = -100  # targets that take no part in a loss (padding, sub-tokens, unmasked tokens)

__all__ = [
    "Task", "Classification", "LanguageModeling", "TokenClassification", "MaskedLanguageModeling", "Seq2Seq",
    "get_task", "better", "IGNORE_INDEX",
]


def call(model: nn.Module, x):
    """Run ``model`` on a batch input: a tensor, or a dict of named inputs (text: input_ids, attention_mask, ...)."""
    return model(**x) if isinstance(x, dict) else model(x)


class Task:
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


class Classification(Task):
    """Cross-entropy over class logits (B, C); accuracy and top-5 accuracy.

    Targets are int labels (B,) or, from mixup/CutMix, class probabilities (B, C) (soft cross-entropy).
    ``label_smoothing`` eps trains on ``(1 - eps) target + eps / C`` (Szegedy et al. 2016, sec. 7), for hard and
    soft targets alike, as ``F.cross_entropy(label_smoothing=eps)`` does. Metrics need hard labels: evaluate
    with a task built without smoothing (see :func:`get_task`), so val loss stays plain cross-entropy.
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


class LanguageModeling(Task):
    """Next-token cross-entropy over (B, T, V) logits; perplexity and bits per token.

    While training a model that exposes its final hidden states (``forward_hidden``) and a bias-free output
    layer ``lm_head``, the loss goes from the hidden states chunk by chunk (:func:`chunked_cross_entropy`)
    and never holds the (B, T, V) logits; it returns None for them (the metrics need only the loss). A wrapped
    model (DDP, ``torch.compile(model)``) takes the plain path; to compile the chunked one, compile the loss call:
    ``torch.compile(lambda x, y: task.loss(model, x, y)[0])``.
    """

    name = "language_modeling"
    unit = "tokens"
    metric_names = ("loss", "perplexity", "bits_per_token")

    def loss(self, model, x, y):
        if model.training and torch.is_grad_enabled() and _has_hidden_states(model):
            hidden = model.forward_hidden(**x) if isinstance(x, dict) else model.forward_hidden(x)  # (B, T, C)
            vocab = getattr(getattr(model, "config", None), "vocab_size", None)  # rows past it are padding
            return chunked_cross_entropy(hidden.flatten(0, 1), model.lm_head.weight, y.flatten(),
                                         vocab_size=vocab), None
        logits = call(model, x)  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten()), logits

    def finalize(self, sums):
        out = super().finalize(sums)
        out["perplexity"] = perplexity(out["loss"])
        out["bits_per_token"] = bits_per_token(out["loss"])
        return out


def _has_hidden_states(model: nn.Module) -> bool:
    """The model's own class has ``forward_hidden`` and a bias-free ``lm_head``. Wrappers (DDP, torch.compile)
    do not count: going around them would skip their gradient hooks or their compiled code."""
    head = getattr(model, "lm_head", None)
    return (callable(getattr(type(model), "forward_hidden", None)) and isinstance(head, nn.Linear)
            and head.bias is None)


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


_CLASSIFICATION = ("image_classification", "sequence_classification")
_TASKS = (*_CLASSIFICATION, "token_classification", "language_modeling", "masked_language_modeling", "translation")


def get_task(name: str, meta: dict[str, Any] | None = None, *, label_smoothing: float = 0.0) -> Task:
    """A new task ``name``; ``meta`` (a data set's) supplies what some tasks need, e.g. NER's label list.

    ``label_smoothing`` (classification and translation) changes the training loss; evaluate with a task built
    without it.

    >>> get_task("image_classification", label_smoothing=0.1).label_smoothing
    0.1
    """
    if name not in _TASKS:
        raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(_TASKS)}")
    if name in _CLASSIFICATION:
        return Classification(name, label_smoothing=label_smoothing)
    if name == "translation":
        return Seq2Seq(label_smoothing=label_smoothing)
    if label_smoothing:
        raise ConfigError(
            f"train.label_smoothing={label_smoothing} applies to classification ({', '.join(_CLASSIFICATION)}) "
            f"and translation, not to {name}; set it to 0"
        )
    if name == "token_classification":
        return TokenClassification((meta or {}).get("label_list"))
    return LanguageModeling() if name == "language_modeling" else MaskedLanguageModeling()


def better(metric: str, new: float, old: float | None) -> bool:
    """Is ``new`` an improvement of ``metric`` over ``old``? Losses go down, accuracies go up."""
    if old is None:
        return True
    higher = "acc" in metric or metric.endswith("f1")
    return new > old if higher else new < old
