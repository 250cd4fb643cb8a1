"""EfficientNet (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks") and
EfficientNet-Lite, one family: B0's stage table scaled in width, depth and resolution (compound scaling).

A stem (3x3/2 conv), seven stages of MBConv blocks (Sandler et al. 2018's inverted residual: 1x1 expansion,
depthwise kxk conv, squeeze-and-excitation (Hu et al. 2018), 1x1 linear projection, a residual connection with
stochastic depth (Huang et al. 2016) where the shape allows), a 1x1 head conv, global average pooling and a
linear classifier::

    x -> features.0 (stem) -> features.1 .. features.7 (MBConv stages) -> features.8 (head) -> avgpool -> classifier

Every conv is followed by batch norm, and by the activation except the projection. The variants are data
(``_efficientnet_specs.py``): B0-B7 scale the widths by ``width_mult`` (rounded to multiples of 8) and each
stage's depth by ``depth_mult`` (rounded up); Lite0-Lite4 drop squeeze-and-excitation, use ReLU6 and keep the
stem, the head and the first and last stage's depth unscaled. Parameter names are torchvision's
(``features.*``, ``classifier.1``), so its EfficientNet-B0..B7 state dicts load strictly; Lite, which torchvision
lacks, uses the same names without the squeeze-and-excitation module.

``padding="same"`` reproduces TensorFlow's SAME padding (asymmetric for strided convs on even sizes), which the
weights converted from TensorFlow (EfficientNet-Lite's) need; ``"symmetric"`` is PyTorch's ``k // 2`` (torchvision's).

>>> import bigmodels
>>> bigmodels.create_model("efficientnet_mini").eval()(torch.zeros(1, 1, 8, 8)).shape
torch.Size([1, 10])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check_choice, check_positive
from ..errors import ConfigError
from ..nn import check_image_input
from ..registry import register_family, register_model
from ._efficientnet_specs import (
    B0_STAGES,
    B_TF_BATCH_NORM,
    B_VARIANTS,
    LITE_VARIANTS,
    MINI_STAGES,
    TF_BATCH_NORM,
)

# not in place: an in-place activation after a hooked module breaks backward hooks (attribution methods)
_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"silu": nn.SiLU, "relu6": nn.ReLU6}


@dataclass
class EfficientNetConfig:
    width_mult: float = 1.0  # channels of every stage (and of stem and head unless fixed_stem_head) x this
    depth_mult: float = 1.0  # blocks of every stage x this, rounded up
    img_size: int = 224  # the resolution the variant is trained and evaluated at; the network takes any size
    num_classes: int = 1000  # 0: no classifier, forward_head returns pooled (B, num_features)
    in_chans: int = 3
    dropout: float = 0.2  # before the classifier
    drop_path_rate: float = 0.2  # stochastic depth: block i of n drops its residual branch with p = rate * i / n
    # (expand ratio, kernel, stride, out channels, blocks) per stage, before scaling (Table 1 of the paper)
    stages: tuple[tuple[int, int, int, int, int], ...] = B0_STAGES
    stem_width: int = 32
    stem_stride: int = 2  # 1 for tiny images
    head_width: int = 1280
    se_ratio: float = 0.25  # squeeze width = block input channels x this; 0: no squeeze-and-excitation (Lite)
    activation: str = "silu"  # silu (swish) | relu6 (Lite)
    fixed_stem_head: bool = False  # Lite: stem and head widths, first and last stage depths not scaled
    padding: str = "symmetric"  # symmetric (k // 2, torchvision) | same (TensorFlow's SAME, TF-converted weights)
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1  # PyTorch's convention: 1 - TensorFlow's decay

    def __post_init__(self) -> None:
        self.stages = tuple(tuple(s) for s in self.stages)
        check_choice("efficientnet", "activation", self.activation, tuple(_ACTIVATIONS))
        check_choice("efficientnet", "padding", self.padding, ("symmetric", "same"))
        for key in ("width_mult", "depth_mult", "img_size", "in_chans", "stem_width", "stem_stride", "head_width",
                    "bn_eps"):
            check_positive("efficientnet", key, getattr(self, key))
        check_positive("efficientnet", "num_classes", self.num_classes, allow_zero=True)
        for key in ("dropout", "drop_path_rate", "se_ratio", "bn_momentum"):
            value = getattr(self, key)
            if not (isinstance(value, int | float) and 0.0 <= value < 1.0):
                raise ConfigError(f"efficientnet.{key}={value!r} must be in [0, 1)")
        if not self.stages or not all(len(s) == 5 and all(isinstance(v, int) and v > 0 for v in s)
                                      for s in self.stages):
            raise ConfigError(f"efficientnet.stages={self.stages!r} must be a non-empty list of (expand ratio, "
                              "kernel, stride, out channels, blocks) rows of positive integers")
        if any(s[1] % 2 == 0 for s in self.stages):
            raise ConfigError(f"efficientnet.stages={self.stages!r}: depthwise kernels must be odd (3, 5, ...)")


def make_divisible(channels: float, divisor: int = 8) -> int:
    """Round ``channels`` to the nearest multiple of ``divisor``, never more than 10% down (the reference's
    ``round_filters``, torchvision's ``_make_divisible``)."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


# ---------------------------------------------------------------------------------------------- blocks


class Conv2dSame(nn.Conv2d):
    """A conv with TensorFlow's SAME padding: output side ceil(in / stride), the odd pixel of padding at the
    bottom/right, computed per input size (the TF-converted weights were trained with it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation, strict=True):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        x = F.pad(x, (left, right, top, bottom))  # (B, C, H + top + bottom, W + left + right)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, *, padding: str = "symmetric",
         bias: bool = False) -> nn.Conv2d:
    """A conv that keeps the resolution / ``stride``. With an odd kernel and stride 1 SAME padding is symmetric,
    so only strided convs need :class:`Conv2dSame`."""
    if padding == "same" and stride > 1:
        return Conv2dSame(in_ch, out_ch, kernel, stride, padding=0, groups=groups, bias=bias)
    return nn.Conv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2, groups=groups, bias=bias)


class ConvNormAct(nn.Sequential):
    """conv -> batch norm -> [activation]; children 0, 1, 2 as torchvision's ``Conv2dNormActivation``."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, *,
                 config: EfficientNetConfig, act: bool = True) -> None:
        layers = [conv(in_ch, out_ch, kernel, stride, groups, padding=config.padding),
                  nn.BatchNorm2d(out_ch, eps=config.bn_eps, momentum=config.bn_momentum)]
        if act:
            layers.append(_ACTIVATIONS[config.activation]())
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """Channel gates from the globally pooled map (Hu et al. 2018): x * sigmoid(fc2(act(fc1(mean(x)))))."""

    def __init__(self, channels: int, squeeze: int, activation: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = activation()
        self.scale_activation = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.activation(self.fc1(self.avgpool(x))))  # (B, C, 1, 1)
        return x * self.scale_activation(scale)


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016), per sample: in training, zero a sample's residual branch with
    probability ``p`` and scale the kept ones by 1 / (1 - p); the identity in eval mode."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)  # (B, 1, 1, 1)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MBConv(nn.Module):
    """Mobile inverted bottleneck: [1x1 expand] -> depthwise kxk -> [squeeze-excite] -> 1x1 project (linear),
    plus the input when stride is 1 and the width is kept (the residual dropped per sample in training)."""

    def __init__(self, in_ch: int, out_ch: int, expand: int, kernel: int, stride: int, drop_path: float,
                 config: EfficientNetConfig) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and in_ch == out_ch
        mid = in_ch * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvNormAct(in_ch, mid, 1, config=config))  # (B, mid, H, W)
        layers.append(ConvNormAct(mid, mid, kernel, stride, groups=mid, config=config))  # (B, mid, H/s, W/s)
        if config.se_ratio > 0:
            squeeze = max(1, int(in_ch * config.se_ratio))  # from the block's input width, as the reference
            layers.append(SqueezeExcitation(mid, squeeze, _ACTIVATIONS[config.activation]))
        layers.append(ConvNormAct(mid, out_ch, 1, config=config, act=False))  # (B, out, H/s, W/s)
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + self.stochastic_depth(out) if self.use_res_connect else out


# ---------------------------------------------------------------------------------------------- the model


def stage_plan(config: EfficientNetConfig) -> list[tuple[int, int, int, int, int]]:
    """The scaled stages: (expand, kernel, stride, out channels, blocks) per stage after the multipliers."""
    last = len(config.stages) - 1
    plan = []
    for i, (expand, kernel, stride, out_ch, blocks) in enumerate(config.stages):
        fixed_depth = config.fixed_stem_head and i in (0, last)
        depth = blocks if fixed_depth else math.ceil(blocks * config.depth_mult)
        plan.append((expand, kernel, stride, make_divisible(out_ch * config.width_mult), depth))
    return plan


class EfficientNet(nn.Module):
    """EfficientNet following the vision contract (intermediates, features, head, reset_classifier).

    >>> cfg = EfficientNetConfig(stages=((1, 3, 1, 8, 1), (4, 3, 2, 16, 1)), stem_width=8, head_width=32,
    ...                          num_classes=3)
    >>> [tuple(f.shape) for f in EfficientNet(cfg).eval().forward_intermediates(torch.zeros(1, 3, 16, 16))]
    [(1, 8, 8, 8), (1, 16, 4, 4), (1, 32, 4, 4)]
    """

    def __init__(self, config: EfficientNetConfig) -> None:
        super().__init__()
        self.config = config
        scale = (lambda c: c) if config.fixed_stem_head else (lambda c: make_divisible(c * config.width_mult))
        stem = scale(config.stem_width)
        layers: list[nn.Module] = [ConvNormAct(config.in_chans, stem, 3, config.stem_stride, config=config)]
        plan = stage_plan(config)
        total, index, in_ch = sum(p[-1] for p in plan), 0, stem
        for expand, kernel, stride, out_ch, depth in plan:
            blocks = []
            for j in range(depth):
                p = config.drop_path_rate * index / total  # deeper blocks are dropped more often
                blocks.append(MBConv(in_ch, out_ch, expand, kernel, stride if j == 0 else 1, p, config))
                in_ch, index = out_ch, index + 1
            layers.append(nn.Sequential(*blocks))
        self.num_features = scale(config.head_width)
        layers.append(ConvNormAct(in_ch, self.num_features, 1, config=config))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(config.dropout), self._linear(config.num_classes))
        self._init_weights()

    def _linear(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _init_weights(self) -> None:
        # torchvision's: He init (fan_out) for convs, BN as the identity, the classifier uniform in +-1/sqrt(out)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The map after each MBConv stage and after the head conv: [(B, C_i, H_i, W_i), ...]
        (at 224 px with B0: 112, 56, 28, 14, 14, 7, 7 and 7 px)."""
        check_image_input(x, self.config.in_chans)
        x = self.features[0](x)  # (B, stem, H/2, W/2)
        maps = []
        for stage in self.features[1:]:
            x = stage(x)
            maps.append(x)
        return maps

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_intermediates(x)[-1]  # (B, num_features, H/32, W/32)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(feats).flatten(1)  # (B, num_features)
        return self.classifier(x)  # (B, num_classes), or (B, num_features) when num_classes == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        check_positive("efficientnet", "num_classes", num_classes, allow_zero=True)
        self.config.num_classes = num_classes
        self.classifier[1] = self._linear(num_classes)
        if num_classes > 0:
            bound = 1.0 / math.sqrt(num_classes)
            nn.init.uniform_(self.classifier[1].weight, -bound, bound)
            nn.init.zeros_(self.classifier[1].bias)


register_family("efficientnet", EfficientNetConfig, EfficientNet)

for _name, (_w, _d, _res, _drop) in B_VARIANTS.items():
    register_model(
        _name, family="efficientnet", task="image_classification",
        config=EfficientNetConfig(width_mult=_w, depth_mult=_d, img_size=_res, dropout=_drop,
                                  **(TF_BATCH_NORM if _name in B_TF_BATCH_NORM else {})),
        description=f"EfficientNet-{_name[-2:].upper()} (Tan & Le 2019): width x{_w}, depth x{_d}, {_res} px; "
                    "torchvision's layout and names, 1000 classes", compare=False,
    )
for _name, (_w, _d, _res, _drop) in LITE_VARIANTS.items():
    register_model(
        _name, family="efficientnet", task="image_classification",
        config=EfficientNetConfig(width_mult=_w, depth_mult=_d, img_size=_res, dropout=_drop, se_ratio=0.0,
                                  activation="relu6", fixed_stem_head=True, padding="same",
                                  bn_eps=1e-3, bn_momentum=0.01),
        description=f"EfficientNet-{_name[-5:].capitalize()}: no squeeze-excite, ReLU6, fixed stem/head, "
                    f"TensorFlow padding (the TF-converted ImageNet weights); {_res} px, 1000 classes",
        compare=False,
    )

register_model(
    "efficientnet_mini", family="efficientnet", task="image_classification",
    config=EfficientNetConfig(stages=MINI_STAGES, stem_width=8, stem_stride=1, head_width=64, img_size=8,
                              in_chans=1, num_classes=10, dropout=0.0, drop_path_rate=0.0),
    description="three short MBConv stages with squeeze-excite, 3x3/1 stem: small grayscale images (8x8 digits)",
)
