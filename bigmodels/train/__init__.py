"""The training engine: loop, optimizers and schedules, checkpoints, data parallelism."""

from .checkpoint import CheckpointManager
from .optim import build_optimizer, build_scheduler, lr_lambda, param_groups
from .trainer import Trainer, build_model_for_data, resolve_device

__all__ = [
    "Trainer", "build_model_for_data", "resolve_device", "CheckpointManager",
    "build_optimizer", "build_scheduler", "lr_lambda", "param_groups",
]
