"""Causal language modeling: next-token cross-entropy; perplexity and bits per token."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..metrics.classification import bits_per_token, perplexity
from ..nn.losses import chunked_cross_entropy
from .base import Task, call

__all__ = ["LanguageModeling"]


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
