"""Mixup and CutMix: blend each image of a batch with a partner from the same batch, and the labels with it.

- mixup (Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization"): ``x = lam x_i + (1 - lam) x_j``.
- CutMix (Yun et al. 2019, "CutMix: Regularization Strategy to Train Strong Classifiers with Localizable
  Features"): paste a box of ``x_j`` covering about ``1 - lam`` of the image into ``x_i``; ``lam`` is then
  recomputed from the box as clipped at the border, so the targets match the pixels really pasted.

Both return soft targets ``lam onehot(y_i) + (1 - lam) onehot(y_j)`` of shape (B, num_classes). As in the
papers' reference code, one ``lam ~ Beta(alpha, alpha)`` is drawn per batch and partners come from a random
permutation of the batch. With both on, a mixed batch uses CutMix with probability ``switch_prob`` (timm's
rule). All randomness comes from the ``generator`` passed in (the trainer's checkpointed one), so a resumed
run mixes exactly as an uninterrupted one.

>>> mix = MixUpCutMix(10, mixup_alpha=0.2, cutmix_alpha=1.0)
>>> x, targets = mix(torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,)), torch.Generator().manual_seed(0))
>>> targets.shape, targets.sum(1)  # (8, 10), each row sums to 1
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, DataError

__all__ = ["MixUpCutMix", "cutmix_box", "sample_beta"]


def _device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def sample_beta(alpha: float, generator: torch.Generator | None = None) -> float:
    """One draw of Beta(alpha, alpha) from ``generator``.

    ``torch.distributions.Beta`` takes no generator (it draws from the global RNG, which a resumed run would
    have to restore in step). Its ``sample()`` is a Dirichlet draw, ``torch._sample_dirichlet([a, b])[0]``
    (gamma variates normalised), and that op does take a generator: calling it directly gives the very draw
    ``Beta(alpha, alpha).sample()`` would give from an RNG in the same state, moving only ``generator``.
    """
    concentration = torch.tensor([alpha, alpha], dtype=torch.float32, device=_device(generator))
    return float(torch._sample_dirichlet(concentration, generator=generator)[0])


def cutmix_box(lam: float, height: int, width: int, generator: torch.Generator | None = None
               ) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of a box of side ``sqrt(1 - lam)`` x the image's, centred uniformly at random
    and clipped at the border (Yun et al.'s ``rand_bbox``)."""
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy, cx = (torch.rand(2, generator=generator, device=_device(generator), dtype=torch.float64)
              * torch.tensor([height, width], dtype=torch.float64, device=_device(generator))).floor().long().tolist()
    top, bottom = min(max(cy - cut_h // 2, 0), height), min(max(cy + cut_h // 2, 0), height)
    left, right = min(max(cx - cut_w // 2, 0), width), min(max(cx + cut_w // 2, 0), width)
    return top, bottom, left, right


class MixUpCutMix:
    """Mix a float image batch (B, C, H, W) with int labels (B,) into (mixed batch, soft targets (B, classes)).

    ``mixup_alpha`` / ``cutmix_alpha`` of 0 turn that method off; ``prob`` is the chance a batch is mixed at all
    (an unmixed batch still gets one-hot targets); ``switch_prob`` picks CutMix over mixup when both are on.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
    ) -> None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"num_classes={num_classes!r} must be a positive int")
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ConfigError(f"mixup_alpha={mixup_alpha!r} and cutmix_alpha={cutmix_alpha!r} must be >= 0 (0: off)")
        for name, p in (("prob", prob), ("switch_prob", switch_prob)):
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"{name}={p!r} must be a probability in [0, 1]")
        self.num_classes = num_classes
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.prob = float(prob)
        self.switch_prob = float(switch_prob)

    @property
    def enabled(self) -> bool:
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.prob > 0

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"

    def __call__(self, x: Tensor, y: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        if x.ndim != 4 or not x.is_floating_point():
            raise DataError(f"mixup/CutMix need a float image batch (B, C, H, W), got {x.dtype} {tuple(x.shape)}; "
                            "mix after the transforms (ToFloat), on image classification data only")
        if y.shape != (x.shape[0],) or y.is_floating_point():
            raise DataError(f"mixup/CutMix need one int label per image, shape ({x.shape[0]},), got "
                            f"{y.dtype} {tuple(y.shape)}")
        targets = F.one_hot(y, self.num_classes).to(x.dtype)  # (B, classes)
        if not self.enabled:
            return x, targets
        apply, switch = torch.rand(2, generator=generator, device=_device(generator)).tolist()
        if apply >= self.prob:
            return x, targets
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or switch < self.switch_prob)
        lam = sample_beta(self.cutmix_alpha if use_cutmix else self.mixup_alpha, generator)
        perm = torch.randperm(x.shape[0], generator=generator, device=_device(generator)).to(x.device)  # partners
        if use_cutmix:
            height, width = x.shape[-2:]
            top, bottom, left, right = cutmix_box(lam, height, width, generator)
            mixed = x.clone()
            mixed[:, :, top:bottom, left:right] = x[perm, :, top:bottom, left:right]
            lam = 1.0 - (bottom - top) * (right - left) / (height * width)  # the area really kept
        else:
            mixed = lam * x + (1.0 - lam) * x[perm]
        return mixed, lam * targets + (1.0 - lam) * targets[perm]
