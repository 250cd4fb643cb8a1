"""Metric functions: plain math on tensors, no model or data knowledge."""

from __future__ import annotations

import math

import torch

__all__ = ["accuracy", "perplexity", "bits_per_token", "topk_correct"]


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, k: int = 1) -> int:
    """How many rows of ``logits`` (N, C) have ``targets`` (N,) among their k highest scores."""
    k = min(k, logits.size(-1))
    top = logits.topk(k, dim=-1).indices  # (N, k)
    return int((top == targets.unsqueeze(-1)).any(-1).sum())


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of argmax predictions equal to ``targets``."""
    return topk_correct(logits, targets, 1) / max(1, targets.numel())


def perplexity(mean_nll: float) -> float:
    """exp of the mean negative log-likelihood per token (capped to stay finite)."""
    return math.exp(min(mean_nll, 700.0))


def bits_per_token(mean_nll: float) -> float:
    """Mean NLL in bits (for a character model: bits per character)."""
    return mean_nll / math.log(2)
