"""Perturbation methods: occlusion (Zeiler & Fergus 2014), LIME (Ribeiro et al. 2016) and KernelSHAP
(Lundberg & Lee 2017), all run by captum.

The features an image is perturbed by are squares of a ``segments`` x ``segments`` grid (occlusion slides a
``window`` instead); a text's are its words, each replaced by the blank token (special tokens stay). A word's
value is shared equally by its pieces, so the pieces of a word add up to the word's attribution.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..errors import ConfigError
from ._core import Subject, has_class_logits, register_method, require_captum

__all__ = ["occlusion", "lime", "kernel_shap", "lime_attributions", "shap_attributions"]


def _count(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}={value!r} must be a whole number >= {minimum}")
    return value


def _share(a: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-element attributions where every element of a group carries the group's value -> each element its
    share (value / group size), so that a group's elements add up to its value."""
    sizes = torch.bincount(mask.reshape(-1)).to(a.dtype)
    return a / sizes[mask]


def lime_attributions(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, target: int,
                      feature_mask: torch.Tensor, baseline: torch.Tensor, *, samples: int = 256, alpha: float = 0.01,
                      batch: int = 32, seed: int = 0) -> torch.Tensor:
    """LIME: a ridge regression (``alpha``) of the target logit on ``samples`` random on/off patterns of the
    features of ``feature_mask`` (off = ``baseline``), weighted by similarity to ``x``; every element gets its
    feature's coefficient. Seeded, so the same call gives the same answer."""
    ca = require_captum()
    from captum._utils.models.linear_model import SkLearnLinearModel

    _count("samples", samples, 2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lime = ca.Lime(forward, interpretable_model=SkLearnLinearModel("linear_model.Ridge", alpha=alpha))
        return lime.attribute(x, target=target, baselines=baseline, feature_mask=feature_mask, n_samples=samples,
                              perturbations_per_eval=batch).detach()


def shap_attributions(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, target: int,
                      feature_mask: torch.Tensor, baseline: torch.Tensor, *, samples: int = 256, batch: int = 32,
                      seed: int = 0) -> torch.Tensor:
    """KernelSHAP: Shapley values of the features of ``feature_mask`` (absent = ``baseline``) estimated from
    ``samples`` coalitions weighted by the Shapley kernel; every element gets its feature's value."""
    ca = require_captum()
    _count("samples", samples, 2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ca.KernelShap(forward).attribute(x, target=target, baselines=baseline, feature_mask=feature_mask,
                                                n_samples=samples, perturbations_per_eval=batch).detach()


def _per_feature(s: Subject, a: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """An image keeps the feature's value on every pixel (a map); a text gives each piece its share."""
    return a[0] if s.modality == "image" else _share(a[0], mask[0])


@register_method("occlusion", has_class_logits)
def occlusion(s: Subject, target: int, *, window: int | None = None, stride: int | None = None,
              batch: int = 32) -> dict[str, Any]:
    """The drop of the target logit when a patch (``window`` px square, every ``stride`` px; default 1/8 of the
    image side and half a window) or a word is replaced by the baseline."""
    ca = require_captum()
    if s.modality == "text":
        mask = s.feature_mask()
        a = ca.FeatureAblation(s.forward).attribute(s.x, baselines=s.baseline(), target=target, feature_mask=mask,
                                                    perturbations_per_eval=batch)
        return {"attributions": _per_feature(s, a.detach(), mask)}
    c, h, w = s.x.shape[1:]
    window = _count("window", window) if window is not None else max(1, min(h, w) // 8)
    stride = _count("stride", stride) if stride is not None else max(1, window // 2)
    a = ca.Occlusion(s.forward).attribute(s.x, sliding_window_shapes=(c, window, window), strides=(c, stride, stride),
                                          baselines=0.0, target=target, perturbations_per_eval=batch)
    return {"attributions": a[0].detach(), "settings": {"window": window, "stride": stride}}


@register_method("lime", has_class_logits)
def lime(s: Subject, target: int, *, samples: int = 256, segments: int = 8, alpha: float = 0.01, batch: int = 32,
         seed: int = 0) -> dict[str, Any]:
    """LIME over the image's ``segments`` x ``segments`` squares or the text's words."""
    mask = s.feature_mask(_count("segments", segments))
    a = lime_attributions(s.forward, s.x, target, mask, s.baseline(), samples=samples, alpha=alpha, batch=batch,
                          seed=seed)
    return {"attributions": _per_feature(s, a, mask)}


@register_method("shap", has_class_logits)
def kernel_shap(s: Subject, target: int, *, samples: int = 256, segments: int = 8, batch: int = 32,
                seed: int = 0) -> dict[str, Any]:
    """KernelSHAP over the image's ``segments`` x ``segments`` squares or the text's words."""
    mask = s.feature_mask(_count("segments", segments))
    a = shap_attributions(s.forward, s.x, target, mask, s.baseline(), samples=samples, batch=batch, seed=seed)
    return {"attributions": _per_feature(s, a, mask)}
