"""Grad-CAM (Selvaraju et al. 2017): the class's gradient, averaged over space, weighs the channels of the
last feature maps; ReLU(sum_k w_k A_k), upsampled to the image.

CNNs: the maps are ``forward_features(x)`` (B, C, h, w), which ``forward_head`` reads. Vision Transformers:
the patch tokens entering the last encoder block (B, N, D) (the final tokens carry no gradient but the class
token's), laid out on the patch grid; the block is found as the parent of the last attention module. Both
through the model contract, for any family.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models._contract import kind_of
from ..nn.attention import attention_modules
from ._core import Subject, has_class_logits, register_method

__all__ = ["grad_cam", "feature_layout"]


def feature_layout(model: nn.Module) -> str | None:
    """``"maps"`` (forward_features gives (B, C, h, w)), ``"tokens"`` (a Transformer's (B, N, D)) or None."""
    if kind_of(model) != "vision":
        return None
    cfg = model.config
    side = getattr(cfg, "img_size", None) or 32
    param = next(model.parameters(), None)
    x = torch.zeros(1, cfg.in_chans, side, side, device=param.device if param is not None else None)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            f = model.forward_features(x)
    finally:
        model.train(was_training)
    if f.dim() == 4:
        return "maps"
    if f.dim() == 3 and any(True for _ in attention_modules(model)):
        return "tokens"
    return None


def _applies(model: nn.Module) -> str | None:
    if kind_of(model) != "vision":
        return "Grad-CAM needs an image model with spatial features (a CNN or a Vision Transformer)"
    if has_class_logits(model) is not None:
        return has_class_logits(model)
    if feature_layout(model) is None:
        return ("its features have no spatial layout (an MLP or a recurrent model): use ig, saliency or occlusion, "
                "which attribute to the pixels directly")
    return None


def _last_block(model: nn.Module) -> nn.Module:
    """The encoder block that holds the last attention module (its parent)."""
    name = [n for n, _ in attention_modules(model)][-1]
    parent = name.rpartition(".")[0]
    return model.get_submodule(parent)


def _grid(n: int, h: int, w: int) -> tuple[int, int, int]:
    """(prefix tokens, grid rows, grid columns) of a token sequence of length ``n`` over an h x w image."""
    for prefix in range(0, 9):
        cells = n - prefix
        rows = round(math.sqrt(cells * h / w))
        if rows > 0 and cells % rows == 0 and abs(cells // rows * h - rows * w) <= max(h, w) // 4 + 1:
            return prefix, rows, cells // rows
    raise AssertionError(f"no patch grid found for {n} tokens over a {h}x{w} image")


@register_method("gradcam", _applies)
def grad_cam(s: Subject, target: int, *, relu: bool = True) -> dict[str, Any]:
    """Grad-CAM of class ``target``: an (H, W) map over the image (``relu=False`` keeps negative evidence)."""
    model, x = s.model, s.x.clone().requires_grad_(True)
    h, w = x.shape[-2:]
    if feature_layout(model) == "maps":
        feats = model.forward_features(x)  # (1, C, h', w')
        logits = s.logits(model.forward_head(feats))
        (grad,) = torch.autograd.grad(logits[0, target], feats)
        weights = grad.mean(dim=(2, 3), keepdim=True)  # (1, C, 1, 1)
        cam = (weights * feats).sum(1)  # (1, h', w')
    else:
        seen: list[torch.Tensor] = []
        handle = _last_block(model).register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        try:
            logits = s.forward(x)
        finally:
            handle.remove()
        tokens = seen[-1]  # (1, N, D)
        (grad,) = torch.autograd.grad(logits[0, target], tokens)
        prefix, rows, cols = _grid(tokens.shape[1], h, w)
        weights = grad[:, prefix:].mean(1, keepdim=True)  # (1, 1, D)
        cam = (weights * tokens[:, prefix:]).sum(-1).reshape(1, rows, cols)  # (1, rows, cols)
    cam = cam.detach()
    if relu:
        cam = F.relu(cam)
    up = F.interpolate(cam[None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]  # (H, W)
    return {"attributions": up, "extras": {"cam": cam[0].cpu()}}
