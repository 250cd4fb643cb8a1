"""Optimizers (SGD with momentum/Nesterov, Adam, AdamW) with decay / no-decay groups, and LR schedules."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import OptimConfig, SchedConfig

__all__ = ["param_groups", "build_optimizer", "lr_lambda", "build_scheduler"]


def param_groups(model: nn.Module, weight_decay: float, decay_all: bool = False) -> list[dict]:
    """Two groups: matrices/kernels get weight decay; biases, norm scales and embeddings (1-D or
    embedding tables) do not, as in BERT and GPT-2 training (decaying them hurts and helps nothing)."""
    if decay_all or weight_decay == 0:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    no_decay_ids = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            no_decay_ids.add(id(module.weight))
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if p.ndim < 2 or id(p) in no_decay_ids else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer of ``cfg`` over ``model``'s trainable parameters (fused kernels on CUDA)."""
    groups = param_groups(model, cfg.weight_decay, cfg.decay_all)
    on_cuda = next(model.parameters()).is_cuda
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    extra = {"fused": True} if on_cuda else {}
    return cls(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **extra)


def lr_lambda(cfg: SchedConfig, total_steps: int):
    """Multiplier of the base LR at optimizer step ``s``: linear warmup from 0, then the schedule."""
    warmup = cfg.warmup_steps
    floor = cfg.min_lr_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.name == "constant":
            return 1.0
        if cfg.name == "step":
            return cfg.gamma ** ((step - warmup) // cfg.step_size)
        if cfg.name == "inverse_sqrt":  # Vaswani et al. 2017, eq. 3, normalised to peak at 1 after warmup
            return math.sqrt(max(1, warmup) / (step + 1))
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if cfg.name == "linear":
            return floor + (1.0 - floor) * (1.0 - progress)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: SchedConfig, total_steps: int):
    """A ``LambdaLR``; its state (the step count) is all a checkpoint needs to restore it."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))
