"""Knowledge distillation for any student and teacher (Hinton et al. 2015; TinyBERT and MiniLM transfer): the
task wrapper is :class:`bigmodels.tasks.distill.DistillationTask`, which the trainer builds when a run config sets
``distill.teacher=DIR``; :func:`distillation_task` builds it outside the trainer, loading the teacher.

    >>> import bigmodels, tempfile, torch
    >>> from bigmodels.config import DistillConfig
    >>> from bigmodels.tasks import get_task
    >>> teacher_dir = bigmodels.save(bigmodels.create_model("mlp_small"), tempfile.mkdtemp())
    >>> student = bigmodels.create_model("mlp_small")
    >>> task = distillation_task(DistillConfig(str(teacher_dir), temperature=2.0, alpha=0.9),
    ...                          get_task("image_classification"), student)
    >>> loss, _ = task.loss(student, torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]))
    >>> bool(loss > 0)
    True
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import DistillConfig
from ..errors import ConfigError
from ..tasks import Task
from ..tasks.distill import (
    DistillationTask,
    attention_kl,
    check_teacher,
    check_vocabulary,
    layer_map,
    soft_target_loss,
    transformer_blocks,
)

__all__ = ["DistillationTask", "distillation_task", "load_teacher", "soft_target_loss", "attention_kl",
           "layer_map", "transformer_blocks", "check_teacher", "check_vocabulary"]


def load_teacher(path: str, device: torch.device | str = "cpu"):
    """(teacher model, its tokenizer or None) from a saved model or training run: frozen, in eval mode, on
    ``device``. Building it draws initial weights from a forked RNG, so training's random stream is unchanged."""
    from ..io import load, saved_tokenizer

    with torch.random.fork_rng(devices=[]):
        teacher = load(path, map_location=device)
    return teacher.eval().requires_grad_(False), saved_tokenizer(path)


def distillation_task(cfg: DistillConfig, base: Task, student: nn.Module, *, tokenizer=None) -> DistillationTask:
    """``base`` wrapped to learn from the teacher ``cfg.teacher`` (loaded onto the student's device);
    ``tokenizer``: the student's data tokenizer, checked against the teacher's."""
    if cfg.teacher is None:
        raise ConfigError("distillation needs a teacher: distill.teacher=<a saved model or runs/NAME>")
    teacher, teacher_tokenizer = load_teacher(cfg.teacher, next(student.parameters()).device)
    return DistillationTask.from_config(cfg, base, student, teacher, teacher_tokenizer=teacher_tokenizer,
                                        tokenizer=tokenizer)
