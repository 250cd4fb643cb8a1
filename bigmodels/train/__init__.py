"""The training engine: loop, callbacks, optimizers and schedules, checkpoints, data parallelism."""

from .callbacks import Callback, TimeBudget
from .checkpoint import CheckpointManager
from .optim import build_optimizer, build_scheduler, lr_lambda, param_groups
from .parallel import DDP, DataParallel, SingleProcess, data_parallel
from .trainer import STOP_REASONS, Trainer, build_model_for_data, check_model_fits_data, resolve_device

__all__ = [
    "Trainer", "build_model_for_data", "check_model_fits_data", "resolve_device", "STOP_REASONS",
    "Callback", "TimeBudget",
    "CheckpointManager", "DataParallel", "SingleProcess", "DDP", "data_parallel",
    "build_optimizer", "build_scheduler", "lr_lambda", "param_groups",
]
