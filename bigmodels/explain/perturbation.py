"""Perturbation methods: occlusion (Zeiler & Fergus 2014), LIME (Ribeiro et al. 2016) and KernelSHAP
(Lundberg & Lee 2017), all run by captum.

The features an image is perturbed by are squares of a ``segments`` x ``segments`` grid (occlusion slides a
``window`` instead); a text's are its words, each replaced by the blank token (special tokens stay). A word's
value is shared equally by its pieces, so the pieces of a word add up to the word's attribution.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ..errors import ConfigError
from ._core import Subject, has_class_logits, register_method, require_captum

__all__ = ["occlusion", "lime", "kernel_shap", "lime_attributions", "shap_attributions", "exact_shapley"]


def _count(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}={value!r} must be a whole number >= {minimum}")
    return value


def _share(a: torch.Tensor, mask: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Per-element attributions where every element of a group carries the group's value -> each real element
    its share (value / the group's real elements), so that a group's elements add up to its value; the others
    (a text's special tokens) 0."""
    sizes = torch.bincount(mask[real].reshape(-1), minlength=int(mask.max()) + 1).clamp_min(1).to(a.dtype)
    return torch.where(real, a / sizes[mask], torch.zeros_like(a))


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


def exact_shapley(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, target: int,
                  feature_mask: torch.Tensor, baseline: torch.Tensor, *, batch: int = 256) -> torch.Tensor:
    """Exact Shapley values of the features of ``feature_mask`` (absent = ``baseline``) for the target logit: the
    game is played on all 2^n coalitions, phi_i = sum over S without i of |S|! (n - |S| - 1)! / n! (f(S + i) - f(S)).
    What KernelSHAP estimates, for few features (``kernel_shap`` uses it when its samples cover every coalition,
    as shap's KernelExplainer does); every element gets its feature's value, as captum's methods return.

    >>> w = torch.tensor([1.0, -2.0, 3.0])
    >>> exact_shapley(lambda z: torch.stack([z @ w, -(z @ w)], 1), torch.ones(1, 3), 0, torch.arange(3)[None],
    ...               torch.zeros(1, 3))
    tensor([[ 1., -2.,  3.]])
    """
    n = int(feature_mask.max()) + 1
    if n > 20:
        raise ConfigError(f"exact Shapley values over {n} features need 2^{n} model calls; use KernelSHAP's sampling")
    coalitions = torch.arange(2**n)
    present = (coalitions[:, None] >> torch.arange(n)) & 1  # (2^n, n)
    values = []
    with torch.no_grad():
        for chunk in present.split(batch):
            keep = chunk.bool().to(x.device)[:, feature_mask[0]]  # (b, ...) each element's feature present?
            values.append(forward(torch.where(keep, x, baseline)).float()[:, target].cpu())
    f = torch.cat(values).double()  # (2^n,)
    size = present.sum(1)
    weight = torch.tensor([math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n) for k in range(n)],
                          dtype=torch.float64)
    phi = torch.empty(n, dtype=torch.float64)
    for i in range(n):
        without = coalitions[present[:, i] == 0]  # the coalitions S that lack feature i
        phi[i] = (weight[size[without]] * (f[without | (1 << i)] - f[without])).sum()
    return phi.float().to(x.device)[feature_mask]


def _per_feature(s: Subject, a: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """An image keeps the feature's value on every pixel (a map); a text gives each piece its share (a text
    without words: each token its own value)."""
    if s.modality == "image":
        return a[0]
    real = torch.tensor([w is not None for w in s.word_ids], device=a.device)
    return _share(a[0], mask[0], real if bool(real.any()) else torch.ones_like(real))


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
    """KernelSHAP over the image's ``segments`` x ``segments`` squares or the text's words: captum's sampled
    estimate, or the exact Shapley values when ``samples`` covers every coalition (2^n <= samples, as shap's
    KernelExplainer enumerates them); the settings say which (``exact``)."""
    mask = s.feature_mask(_count("segments", segments))
    _count("samples", samples, 2)
    exact = 2 ** (int(mask.max()) + 1) <= samples
    if exact:
        a = exact_shapley(s.forward, s.x, target, mask, s.baseline(), batch=max(batch, 256))
    else:
        a = shap_attributions(s.forward, s.x, target, mask, s.baseline(), samples=samples, batch=batch, seed=seed)
    return {"attributions": _per_feature(s, a, mask), "settings": {"exact": exact}}
