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
from torch import nn

from ..errors import ConfigError

__all__ = ["shap_agreement"]


def _require_shap() -> Any:
    if importlib.util.find_spec("shap") is None:
        raise ConfigError('the agreement check runs shap\'s KernelExplainer: pip install "bigmodels[shap]"')
    import shap

    return shap


def shap_agreement(model: nn.Module, inputs: Any, target: int | None = None, tokenizer: Any = None, *,
                   samples: int = 1024, segments: int = 8, exact_features: int = 12,
                   shap_samples: int = 4096) -> dict[str, Any]:
    """The library's KernelSHAP (``explain(..., "shap", samples=samples)``) and shap's KernelExplainer on one
    input: ``{"spearman", "ours", "shap" (one value per feature, as numpy arrays), "features", "exact", "target"}``.
    ``spearman`` is the rank correlation of the two, over the features whose value either method moves (a text's
    special tokens never leave the input, so both give them 0).

    >>> import torch
    >>> from bigmodels.testing import tiny_model
    >>> out = shap_agreement(tiny_model("cnn_small").eval(), torch.randn(1, 8, 8), target=3, segments=3)
    >>> out["features"], out["exact"]
    (9, True)
    """
    shap = _require_shap()
    from scipy.stats import spearmanr

    from . import explain, prepare

    e = explain(model, inputs, "shap", target, tokenizer, samples=samples, segments=segments)
    s = prepare(model, inputs, tokenizer)
    mask, baseline = s.feature_mask(segments), s.baseline()
    n = int(mask.max()) + 1

    def f(z: np.ndarray) -> np.ndarray:  # (B, n) coalitions -> the target logit of each
        present = torch.as_tensor(z, dtype=torch.bool)[:, mask[0]]  # (B, ...) each element's feature present?
        out = []
        with torch.no_grad():
            for chunk in present.split(256):
                out.append(s.forward(torch.where(chunk, s.x, baseline)).float()[:, e.target])
        return torch.cat(out).numpy().astype(np.float64)

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
