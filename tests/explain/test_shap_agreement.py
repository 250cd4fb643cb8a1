"""Issue 13's agreement target: ``explain(method="shap")`` (captum's KernelSHAP) and shap's KernelExplainer on the
same model, input and baseline give attributions whose Spearman rank correlation is >= 0.9.

shap is an optional extra (``pip install "bigmodels[shap]"``: it pulls pandas and numba, so the test extra leaves
it out); without it these tests skip.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bigmodels.explain import explain, prepare
from bigmodels.testing import tiny_model

shap = pytest.importorskip("shap", reason='shap is not installed (pip install "bigmodels[shap]")')
spearmanr = pytest.importorskip("scipy.stats").spearmanr

pytestmark = pytest.mark.usefixtures("one_thread")


def _shap_values(model, inputs, target: int, segments: int = 8) -> np.ndarray:
    """shap's KernelExplainer over the features ``explain`` uses (a text's tokens, an image's grid squares), on the
    target logit, with the all-absent coalition (every feature at ``explain``'s baseline) as the background."""
    s = prepare(model, inputs)
    mask, baseline = s.feature_mask(segments), s.baseline()
    n = int(mask.max()) + 1

    def f(z: np.ndarray) -> np.ndarray:
        present = torch.as_tensor(z, dtype=torch.bool)[:, mask[0]]  # (B, ...) each element's feature present?
        with torch.no_grad():
            return s.forward(torch.where(present, s.x, baseline)).float()[:, target].numpy().astype(np.float64)

    explainer = shap.KernelExplainer(f, np.zeros((1, n)))
    values = explainer.shap_values(np.ones((1, n)), nsamples=2 ** n + 2, silent=True)  # every coalition: exact
    return np.asarray(values).reshape(-1), mask[0]


def _agreement(model, inputs, target: int, **settings) -> tuple[float, np.ndarray, np.ndarray]:
    e = explain(model, inputs, "shap", target=target, **settings)
    ours, mask = _shap_values(model, inputs, target, settings.get("segments", 8))
    # explain spreads a feature's value over its elements (images: the value on every pixel of the square);
    # read one value per feature back
    a = e.attributions.reshape(-1) if e.modality == "text" else e.attributions[0].reshape(-1)
    flat = mask.reshape(-1) if e.modality == "text" else mask[0].reshape(-1)
    theirs = np.array([float(a[flat == k][0]) * (1 if e.modality == "image" else int((flat == k).sum()))
                       for k in range(int(flat.max()) + 1)])
    return float(spearmanr(theirs, ours).statistic), theirs, ours


def _spread(model: torch.nn.Module, std: float = 0.3) -> torch.nn.Module:
    """Larger random weights: at its init (std 0.02) a tiny encoder's logit barely depends on its input, and
    rankings of near-zero attributions are noise; with these, words matter and interact (a nonlinear game)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, std)
    return model.eval()


def test_kernel_shap_agrees_with_shap_on_a_text_classifier():
    torch.manual_seed(0)
    model = _spread(tiny_model("bert_mini", head="sequence_classification", num_labels=2))
    ids = torch.randint(5, 60, (10,))
    rho, captum_values, shap_values = _agreement(model, ids, target=1, samples=1024)
    assert rho >= 0.9, (rho, captum_values, shap_values)
    # both are Shapley estimates of the same game: efficiency holds for the exact ones, and captum is close
    assert np.allclose(captum_values, shap_values, atol=0.1 * np.abs(shap_values).max()), (captum_values,
                                                                                            shap_values)


def test_kernel_shap_agrees_with_shap_on_an_image_classifier():
    torch.manual_seed(0)
    model = tiny_model("cnn_small").eval()
    rho, captum_values, shap_values = _agreement(model, torch.randn(1, 8, 8), target=3, samples=1024, segments=3)
    assert rho >= 0.9, (rho, captum_values, shap_values)
