"""Gradient methods: saliency (Simonyan et al. 2014) and integrated gradients (Sundararajan et al. 2017).

Integrated gradients satisfies completeness: the attributions add up to f(x) - f(baseline). Its gap
``delta`` (captum's convergence delta) is returned with every explanation and checked against
``tolerance`` (1% of |f(x) - f(baseline)| by default): a larger gap means too few steps, and is logged.
For texts both work on the token-embedding output (captum's layer variants), summed over the embedding
width (integrated gradients) or as the gradient's L2 norm per token (saliency).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..errors import ConfigError
from ._core import Subject, embedding_module, has_class_logits, register_method, require_captum

__all__ = ["saliency", "integrated_gradients"]

log = logging.getLogger(__name__)


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}={value!r} must be a whole number >= 1")
    return value


@register_method("saliency", has_class_logits)
def saliency(s: Subject, target: int) -> dict[str, Any]:
    """|d logit_target / d input|: per pixel and channel for images; the gradient's L2 norm over the
    embedding of each token for texts."""
    ca = require_captum()
    if s.modality == "image":
        a = ca.Saliency(s.forward).attribute(s.x.clone().requires_grad_(True), target=target, abs=True)
        return {"attributions": a[0].detach()}
    layer = ca.LayerGradientXActivation(s.forward, embedding_module(s.model), multiply_by_inputs=False)
    grads = layer.attribute(s.x, target=target)  # (1, T, D)
    return {"attributions": grads[0].detach().norm(dim=-1)}


@register_method("ig", has_class_logits)
def integrated_gradients(s: Subject, target: int, *, steps: int = 50, quadrature: str = "gausslegendre",
                         internal_batch_size: int | None = None, tolerance: float = 0.01,
                         max_steps: int = 400) -> dict[str, Any]:
    """Integrated gradients from the baseline (a zero image; the text with its non-special tokens blanked)
    along a straight path of ``steps`` points (``quadrature``: captum's rule, Gauss-Legendre by default).

    Completeness is checked on every call: while the gap exceeds ``tolerance`` (relative to
    |f(x) - f(baseline)|) the path is integrated again with twice the points, up to ``max_steps``
    (``max_steps=steps`` turns this off); the settings report the steps used. Returns the attributions
    (signed) and the completeness gap."""
    ca = require_captum()
    _positive("steps", steps)
    _positive("max_steps", max_steps)
    baseline = s.baseline()
    with torch.no_grad():
        gap = float(s.forward(s.x)[0, target] - s.forward(baseline)[0, target])
    n = steps
    while True:
        kwargs = dict(baselines=baseline, target=target, n_steps=n, method=quadrature,
                      internal_batch_size=internal_batch_size, return_convergence_delta=True)
        if s.modality == "image":
            a, delta = ca.IntegratedGradients(s.forward).attribute(s.x, **kwargs)
            attributions = a[0].detach()
        else:
            layer = ca.LayerIntegratedGradients(s.forward, embedding_module(s.model))
            a, delta = layer.attribute(s.x, **kwargs)  # (1, T, D)
            attributions = a[0].detach().sum(-1)
        delta = float(delta.reshape(-1)[0])
        relative = abs(delta) / max(abs(gap), 1e-12)
        if relative <= tolerance or 2 * n > max_steps:
            break
        n *= 2
    if relative > tolerance:
        log.warning("integrated gradients: the attributions miss f(x) - f(baseline) = %.4g by %.2f%% (> %.2f%%) "
                    "at %d steps; raise max_steps", gap, 100 * relative, 100 * tolerance, n)
    return {"attributions": attributions, "delta": delta, "relative_delta": relative,
            "extras": {"f_x_minus_f_baseline": gap}, "settings": {"steps": n}}
