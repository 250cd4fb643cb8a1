"""How far an explanation can be trusted: deletion and insertion curves (Petsiuk et al. 2018, RISE).

Deletion removes the input's units (pixels, or non-special tokens) from the most to the least important by the
attributions, replacing them by the baseline (a zero image, the blank token), and follows the target's
probability: a faithful explanation makes it fall fast (a small area under the curve). Insertion starts from
the baseline and puts the units back in the same order: the probability should rise fast (a large area). Both
are compared with the same curves for random orders; the margins (random - deletion, insertion - random) are
positive for an explanation better than chance. captum's infidelity and max-sensitivity (Yeh et al. 2019) add
how well the attributions predict the model's change when units are removed, and how steady they are under a
small change of the input.
"""

from __future__ import annotations

import importlib.util
import inspect
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..models._contract import kind_of, model_device, model_info
from ._core import METHODS, Explanation, Subject

__all__ = ["faithfulness", "curves", "rank_methods", "infidelity", "sensitivity"]


def _auc(ys: torch.Tensor) -> float:
    """Area under a curve sampled at evenly spaced fractions 0 .. 1 (trapezoid rule)."""
    return float(torch.trapezoid(ys, dx=1.0 / (len(ys) - 1)))


@torch.no_grad()
def curves(forward, x: torch.Tensor, baseline: torch.Tensor, target: int, order: torch.Tensor, units: torch.Tensor,
           steps: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """(deletion, insertion) curves of the target's probability, each (steps + 1,), for ``x`` (1, ...) whose
    units (``units``: the same shape as x without the batch, each element's unit index, -1 = never changed) are
    removed / inserted in ``order`` (unit indices, most important first)."""
    n = len(order)
    rank = torch.full((int(units.max()) + 2,), n, dtype=torch.long, device=x.device)  # unit -> its place; -1 last
    rank[order] = torch.arange(n, device=x.device)
    place = rank[units]  # (...) each element's place in the order; n = never
    counts = [round(i * n / steps) for i in range(steps + 1)]
    gone = torch.stack([place < k for k in counts])  # (steps + 1, ...)
    deleted = torch.where(gone, baseline, x)  # broadcast over the batch of steps
    inserted = torch.where(gone, x, baseline)
    probs = [forward(batch).float().softmax(-1)[:, target] for batch in (deleted, inserted)]
    return probs[0].cpu(), probs[1].cpu()


def faithfulness(model: nn.Module, e: Explanation, *, steps: int = 20, random_orders: int = 5,
                 seed: int = 0, infidelity_samples: int = 8, sensitivity_samples: int = 3) -> dict[str, Any]:
    """Deletion and insertion of explanation ``e`` on ``model``, with the mean of ``random_orders`` random orders:
    ``{"deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc", "deletion_margin",
    "insertion_margin", "deletion", "insertion" (the curves as lists)}``; with captum installed also
    ``"infidelity"`` (:func:`infidelity`, ``infidelity_samples`` perturbations) and ``"sensitivity"``
    (:func:`sensitivity`, ``sensitivity_samples`` re-explanations; images only, None for texts); 0 samples
    skips either (None).

    >>> import torch
    >>> from bigmodels.testing import tiny_model
    >>> from bigmodels.explain import explain
    >>> model = tiny_model("cnn_small").eval()
    >>> sorted(faithfulness(model, explain(model, torch.randn(1, 8, 8), "saliency")))[:2]
    ['deletion', 'deletion_auc']
    """
    if steps < 1 or random_orders < 1:
        raise ConfigError(f"steps={steps} and random_orders={random_orders} must both be >= 1")
    if e.target < 0:
        raise ConfigError(f"a {e.method} explanation of a model without class logits has no target to score")
    s, x, baseline, units, scores = _units(model, e)  # units: -1 for special tokens, never deleted
    device = x.device
    candidates = (torch.arange(len(scores)) if e.modality == "image"
                  else (units >= 0).nonzero().flatten().cpu())
    if len(candidates) == 0:
        raise ConfigError("the input has no units to delete (a text of special tokens only)")
    order = candidates[scores[candidates].argsort(descending=True)].to(device)
    was_training = model.training
    model.eval()
    try:
        deletion, insertion = curves(s.forward, x, baseline, e.target, order, units, steps)
        g = torch.Generator().manual_seed(seed)
        rand = [curves(s.forward, x, baseline, e.target,
                       candidates[torch.randperm(len(candidates), generator=g)].to(device), units, steps)
                for _ in range(random_orders)]
    finally:
        model.train(was_training)
    out = {"deletion_auc": _auc(deletion), "insertion_auc": _auc(insertion),
           "random_deletion_auc": sum(_auc(d) for d, _ in rand) / len(rand),
           "random_insertion_auc": sum(_auc(i) for _, i in rand) / len(rand),
           "deletion": deletion.tolist(), "insertion": insertion.tolist()}
    out["deletion_margin"] = out["random_deletion_auc"] - out["deletion_auc"]
    out["insertion_margin"] = out["insertion_auc"] - out["random_insertion_auc"]
    captum = importlib.util.find_spec("captum") is not None
    out["infidelity"] = infidelity(model, e, samples=infidelity_samples, seed=seed) if (
        captum and infidelity_samples) else None
    out["sensitivity"] = sensitivity(model, e, samples=sensitivity_samples, seed=seed) if (
        captum and sensitivity_samples and e.modality == "image") else None
    return out


def _units(model: nn.Module, e: Explanation) -> tuple[Subject, torch.Tensor, torch.Tensor, torch.Tensor,
                                                        torch.Tensor]:
    """(subject, x (1, ...), baseline, each element's unit index (-1: never changed), the units' attributions):
    pixels (attributions summed over channels) of an image, the non-special tokens of a text."""
    info = model_info(model)
    device = model_device(model)
    x = e.inputs[None].to(device)
    s = Subject(model, e.modality, info.task, kind_of(model), x, position=e.settings.get("position"))
    if e.modality == "image":
        h, w = x.shape[-2:]
        units = torch.arange(h * w, device=device).reshape(h, w).expand(x.shape[1:])  # (C, H, W)
        return s, x, torch.zeros_like(x), units, e.heatmap().reshape(-1).float()
    real = [w is not None for w in e.word_ids]
    units = torch.tensor([i if r else -1 for i, r in enumerate(real)], device=device)
    baseline = torch.where(units[None] >= 0, torch.full_like(x, int(e.settings.get("blank_id", 0))), x)
    return s, x, baseline, units, torch.where(units.cpu() >= 0, e.attributions.float(), torch.zeros(len(real)))


def infidelity(model: nn.Module, e: Explanation, *, samples: int = 8, fraction: float = 0.25, seed: int = 0) -> float:
    """captum's infidelity (Yeh et al. 2019) of ``e`` under removal perturbations: ``samples`` times a random
    ``fraction`` of the units (pixels, non-special tokens) is replaced by the baseline, and the change of the
    target logit is compared with the sum of the removed units' attributions (their mean squared gap, after the
    best scaling of the attributions, captum's ``normalize=True`` as in the paper's code: so it ignores the
    attributions' scale and sign, which deletion / insertion check). 0 for a perfect explanation of a linear
    model; lower is better.

    >>> import torch
    >>> from bigmodels.testing import tiny_model
    >>> from bigmodels.explain import explain
    >>> model = tiny_model("cnn_small").eval()
    >>> infidelity(model, explain(model, torch.randn(1, 8, 8), "ig")) >= 0
    True
    """
    from captum.metrics import infidelity as captum_infidelity

    if samples < 1 or not 0 < fraction < 1:
        raise ConfigError(f"samples={samples} must be >= 1 and fraction={fraction} in (0, 1)")
    if e.target < 0:
        raise ConfigError(f"a {e.method} explanation of a model without class logits has no target to score")
    s, x, baseline, units, scores = _units(model, e)
    n = len(scores)
    present = units >= 0

    def compose(z: torch.Tensor) -> torch.Tensor:  # (B, U) unit presence -> (B, ...) inputs
        keep = (z[:, units.clamp(min=0)] > 0.5) | ~present  # (B, ...)
        return torch.where(keep, x, baseline)

    def forward(z: torch.Tensor) -> torch.Tensor:
        return s.forward(compose(z))

    g = torch.Generator().manual_seed(seed)
    movable = torch.zeros(n, dtype=torch.bool)
    movable[units[present].unique().cpu()] = True

    def perturb(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        removed = ((torch.rand(z.shape, generator=g) < fraction) & movable).to(z.dtype).to(z.device)
        return removed, z - removed

    ones = torch.ones(1, n, device=x.device)
    was_training = model.training
    model.eval()
    try:
        value = captum_infidelity(forward, perturb, ones, scores[None].to(x.device), target=e.target,
                                  n_perturb_samples=samples, normalize=True)
    finally:
        model.train(was_training)
    return float(value[0])


def sensitivity(model: nn.Module, e: Explanation, *, samples: int = 3, radius: float = 0.02, seed: int = 0) -> float:
    """captum's max-sensitivity (Yeh et al. 2019) of an image explanation: the largest relative change
    ||phi(x + d) - phi(x)|| / ||phi(x)|| of its heatmap over ``samples`` uniform perturbations |d| <= ``radius``
    (in the model's normalised input units), each explained again with the same method, target and settings.
    Lower is steadier. Texts have no small continuous perturbation of their token ids: a ConfigError."""
    from captum.metrics import sensitivity_max


    if e.modality != "image":
        raise ConfigError("sensitivity perturbs the input continuously: it applies to image explanations only")
    if samples < 1 or radius <= 0:
        raise ConfigError(f"samples={samples} must be >= 1 and radius={radius} > 0")
    method = METHODS[e.method]
    allowed = set(list(inspect.signature(method).parameters)[2:])
    settings = {k: v for k, v in e.settings.items() if k in allowed}
    info = model_info(model)
    device = model_device(model)

    def heatmap(x: torch.Tensor) -> torch.Tensor:  # (C, H, W) -> (H, W), as explain(...).heatmap()
        a = method(Subject(model, "image", info.task, kind_of(model), x[None]), e.target, **settings)["attributions"]
        return a.detach().float().sum(0) if a.dim() == 3 else a.detach().float()

    def heatmaps(batch: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor]:
        # captum passes its inputs as a tuple, reads the explanations as one, and calls this under no_grad
        batch = batch[0] if isinstance(batch, tuple) else batch
        with torch.enable_grad():
            return (torch.stack([heatmap(b) for b in batch]),)

    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            value = sensitivity_max(heatmaps, e.inputs[None].to(device), perturb_radius=radius,
                                    n_perturb_samples=samples)
    finally:
        model.train(was_training)
    return float(value[0])


def rank_methods(model: nn.Module, explanations: list[Explanation], **kwargs: Any) -> list[dict[str, Any]]:
    """The faithfulness of each explanation, best first (by the sum of the deletion and insertion margins):
    ``[{"method", "deletion_auc", ..., "margin"}]``."""
    rows = []
    for e in explanations:
        if e.target < 0:
            continue
        f = faithfulness(model, e, **kwargs)
        rows.append({"method": e.method, **{k: v for k, v in f.items() if not isinstance(v, list)},
                     "margin": f["deletion_margin"] + f["insertion_margin"]})
    return sorted(rows, key=lambda r: -r["margin"])
