"""What each task feeds a model, the loss it trains on and the metrics it reports; one file per task.

The trainer and the evaluator know tasks, not model families: a task turns a batch ``(x, y)`` into a loss
and running metric sums. Tasks sit above ``metrics``, ``nn`` and the model contract, and below the stages
that use them (train, evaluate, bench), which they never import.

    >>> import torch
    >>> from bigmodels.tasks import get_task
    >>> task = get_task("image_classification")
    >>> loss, logits = task.loss(torch.nn.Linear(4, 3), torch.randn(2, 4), torch.tensor([0, 2]))
    >>> sums = {}
    >>> task.update(sums, loss.detach(), logits.detach(), torch.tensor([0, 2]))
    >>> sorted(task.finalize(sums))
    ['accuracy', 'loss']
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .base import IGNORE_INDEX, Task, better, call
from .classification import Classification
from .language_modeling import LanguageModeling
from .masked_lm import MaskedLanguageModeling
from .seq2seq import Seq2Seq
from .token_classification import TokenClassification

__all__ = [
    "Task", "Classification", "LanguageModeling", "TokenClassification", "MaskedLanguageModeling", "Seq2Seq",
    "get_task", "better", "call", "IGNORE_INDEX", "TASK_NAMES",
]

_CLASSIFICATION = ("image_classification", "sequence_classification")
TASK_NAMES = (*_CLASSIFICATION, "token_classification", "language_modeling", "masked_language_modeling",
              "translation")  # the registry tasks that get_task builds


def get_task(name: str, meta: dict[str, Any] | None = None, *, label_smoothing: float = 0.0) -> Task:
    """A new task ``name``; ``meta`` (a data set's) supplies what some tasks need, e.g. NER's label list.

    ``label_smoothing`` (classification and translation) changes the training loss; evaluate with a task built
    without it.

    >>> get_task("image_classification", label_smoothing=0.1).label_smoothing
    0.1
    """
    if name not in TASK_NAMES:
        raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(TASK_NAMES)}")
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
