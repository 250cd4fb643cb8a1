"""Issue 13's agreement target: ``explain(method="shap")`` (the library's KernelSHAP) and shap's KernelExplainer on the
same model, input and baseline give attributions whose Spearman rank correlation is >= 0.9.

shap is an optional extra (``pip install "bigmodels[shap]"``: it pulls pandas and numba, so the test extra leaves
it out); without it these tests skip.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bigmodels.explain import shap_agreement
from bigmodels.testing import tiny_model

shap = pytest.importorskip("shap", reason='shap is not installed (pip install "bigmodels[shap]")')

pytestmark = pytest.mark.usefixtures("one_thread")


def _spread(model: torch.nn.Module, std: float = 0.3) -> torch.nn.Module:
    """Larger random weights: at its init (std 0.02) a tiny encoder's logit barely depends on its input, and
    rankings of near-zero attributions are noise; with these, words matter and interact (a nonlinear game)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, std)
    return model.eval()


@pytest.mark.parametrize("samples", [1000, 1024], ids=["sampled", "exact"])
def test_kernel_shap_agrees_with_shap_on_a_text_classifier(samples):
    # 10 features: 1,024 coalitions. 1,000 samples take the sampled estimate, 1,024 the exact Shapley values
    torch.manual_seed(0)
    model = _spread(tiny_model("bert_mini", head="sequence_classification", num_labels=2))
    ids = torch.randint(5, 60, (10,))
    out = shap_agreement(model, ids, target=1, samples=samples)
    rho, our_values, shap_values = out["spearman"], out["ours"], out["shap"]
    assert out["exact"] and out["features"] == 10  # shap enumerates every coalition: its values are exact
    assert rho >= (0.999 if samples == 1024 else 0.9), (rho, our_values, shap_values)
    # both are Shapley values of the same game: efficiency holds for the exact ones, and the estimate is close
    tolerance = 1e-4 if samples == 1024 else 0.1
    assert np.allclose(our_values, shap_values, atol=tolerance * np.abs(shap_values).max()), (our_values,
                                                                                                  shap_values)


def test_kernel_shap_agrees_with_shap_on_an_image_classifier():
    torch.manual_seed(0)
    model = tiny_model("cnn_small").eval()
    out = shap_agreement(model, torch.randn(1, 8, 8), target=3, samples=1024, segments=3)
    assert out["exact"] and out["features"] == 9
    assert out["spearman"] >= 0.9, out
