"""Attention maps and attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers").

The maps are read through the :class:`~bigmodels.nn.attention.AttentionProbs` module of every attention
module, with the model switched to the reference path for the one forward pass
(:func:`~bigmodels.nn.attention.reference_attention`). Rollout: per layer the heads' mean A, the residual
connection added as the identity, Â = 0.5 A + 0.5 I, rows renormalised to sum to 1, and the layers multiplied
from the first up: R = Â_L ... Â_2 Â_1. Row i of R says how much of token i's final state flows from each
input token. An explanation reads the row of the token the head reads (the class token, or the explained
position; the mean over rows otherwise); for a translation model, the encoder's self-attention.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models._contract import model_info
from ..nn.attention import attention_modules, reference_attention
from ._core import Subject, register_method
from .cam import _grid

__all__ = ["attention_maps", "rollout", "attention_rollout"]


def attention_maps(model: nn.Module, run: Callable[[], Any]) -> list[tuple[str, torch.Tensor]]:
    """``run()`` once on the reference attention path; the attention probabilities of every attention module
    it called, in call order: [(module name, (B, nh, Tq, Tk))]."""
    maps: list[tuple[str, torch.Tensor]] = []
    handles = [m.probs.register_forward_hook(lambda mod, args, out, name=name: maps.append((name, out.detach())))
               for name, m in attention_modules(model)]
    try:
        with reference_attention(model), torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return maps


def rollout(maps: list[torch.Tensor] | torch.Tensor, *, residual: bool = True) -> torch.Tensor:
    """Attention rollout of the per-layer maps [(nh, T, T)] (or (L, nh, T, T)), first layer first -> (T, T)
    whose rows sum to 1. ``residual=False`` drops the identity term (the paper keeps it)."""
    result: torch.Tensor | None = None
    for a in maps:
        a = a.float().mean(0)  # (T, T): the heads' mean
        if residual:
            a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], device=a.device)
        a = a / a.sum(-1, keepdim=True)
        result = a if result is None else a @ result
    if result is None:
        raise ValueError("rollout needs at least one attention map")
    return result


def _applies(model: nn.Module) -> str | None:
    if not any(True for _ in attention_modules(model)):
        return (f"{model_info(model).family} has no attention modules: attention maps are for Transformers "
                "(BERT, GPT, ViT, the Transformer)")
    return None


@register_method("attention", _applies)
def attention_rollout(s: Subject, target: int, *, residual: bool = True) -> dict[str, Any]:
    """Attention rollout as attributions (over the patch grid, upsampled to the image, or over the tokens);
    the raw maps (L, nh, T, T) and the rollout (T, T) in ``extras``. Class-independent: ``target`` is only
    reported."""
    model, x = s.model, s.x
    if s.kind == "encoder_decoder":
        recorded = attention_maps(model, lambda: model.encode(x, torch.ones_like(x)))
    else:
        recorded = attention_maps(model, lambda: model(x))
    n = recorded[0][1].shape[-1]
    self_maps = [(name, a[0]) for name, a in recorded if a.shape[-2:] == (n, n)]  # (nh, T, T) each
    r = rollout([a for _, a in self_maps], residual=residual)  # (T, T)
    extras = {"attention": torch.stack([a for _, a in self_maps]).cpu(), "rollout": r.cpu(),
              "layers": [name for name, _ in self_maps]}
    if s.modality == "image":
        h, w = x.shape[-2:]
        prefix, rows, cols = _grid(n, h, w)
        row = r[0] if prefix else r.mean(0)
        grid = row[prefix:].reshape(1, 1, rows, cols)
        up = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        return {"attributions": up, "extras": extras}
    if s.position is not None:
        row = r[s.position]
    elif s.special and s.special[0] and s.kind == "encoder":
        row = r[0]  # the class token ([CLS]) the classifier reads
    else:
        row = r.mean(0)
    return {"attributions": row, "extras": extras}
