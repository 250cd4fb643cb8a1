"""How far ``explain(method="shap")`` (the library's KernelSHAP) agrees with shap's KernelExplainer, the reference
implementation of KernelSHAP (Lundberg & Lee 2017), on the same model, input, features and baseline.

Both explain the target logit as a game over the same interpretable features (the words of a text, the squares of
an image's grid; an absent feature takes ``explain``'s baseline). shap enumerates every coalition when there are
at most ``exact_features`` features (its values are then exact Shapley values) and samples ``shap_samples``
otherwise. Needs the ``shap`` extra (``pip install "bigmodels[shap]"``).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ._core import Explanation, Subject
from .perturbation import _play

__all__ = ["agreement_with_shap"]


def _require_shap() -> Any:
    if importlib.util.find_spec("shap") is None:
        raise ConfigError('the agreement check runs shap\'s KernelExplainer: pip install "bigmodels[shap]"')
    import shap

    return shap


def agreement_with_shap(e: Explanation, s: Subject, *, segments: int = 8, exact_features: int = 12,
                        shap_samples: int = 4096) -> dict[str, Any]:
    """KernelSHAP explanation ``e`` of subject ``s`` (``prepare``-d from the same input) against shap's
    KernelExplainer on the same game; what :func:`bigmodels.explain.shap_agreement` returns."""
    shap = _require_shap()
    from scipy.stats import spearmanr

    mask, baseline = s.feature_mask(segments), s.baseline()
    n = int(mask.max()) + 1

    def f(z: np.ndarray) -> np.ndarray:  # (B, n) coalitions -> the target logit of each
        return _play(s.forward, s.x, e.target, mask, baseline, torch.as_tensor(z != 0), 256).numpy()

    exact = n <= exact_features
    explainer = shap.KernelExplainer(f, np.zeros((1, n)))
    theirs = np.asarray(explainer.shap_values(np.ones((1, n)), nsamples=2**n + 2 if exact else shap_samples,
                                              silent=True)).reshape(-1)
    # explain spreads a feature's value over its elements: an image keeps it on every pixel of the square, a text
    # gives each piece its share; read one value per feature back
    flat = mask.reshape(-1) if e.modality == "text" else mask[0, 0].reshape(-1)
    a = e.attributions.reshape(-1) if e.modality == "text" else e.attributions[0].reshape(-1)
    ours = np.array([float(a[flat == k].sum() if e.modality == "text" else a[flat == k][0]) for k in range(n)])
    moved = (np.abs(ours) > 0) | (np.abs(theirs) > 0)
    if moved.sum() < 2:
        raise ConfigError("fewer than two features change the target logit: no ranking to compare")
    rho = float(spearmanr(ours[moved], theirs[moved]).statistic)
    return {"spearman": rho, "ours": ours, "shap": theirs, "features": n, "exact": exact, "target": e.target}
