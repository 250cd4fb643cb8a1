"""The Inception family: GoogLeNet (Inception v1, Szegedy et al. 2014, arXiv:1409.4842) and Inception-v3
(Szegedy et al. 2015, arXiv:1512.00567), weight-compatible with torchvision's ``googlenet`` and ``inception_v3``.

Module and parameter names are torchvision's, so its state dicts load strictly. Both networks share the
conv-BN-ReLU unit (:class:`BasicConv2d`), the pooled head, torchvision's ``transform_input`` and the plumbing of
auxiliary heads; the block widths are data (``_inception_specs.py``) and Inception-v3's five block types, which
are genuinely different modules, are each written once.

Auxiliary heads: ``forward`` always returns the main logits (one tensor, as bigmodels' trainer expects; in
training mode torchvision returns a namedtuple instead). For the paper's auxiliary losses call
``forward_aux(x)``, which returns ``(logits, aux1, aux2)`` for GoogLeNet (torchvision's namedtuple orders them
``logits, aux2, aux1``) and ``(logits, aux)`` for Inception-v3, and weight them yourself (0.3 each for GoogLeNet,
0.4 for Inception-v3 in the papers)::

    >>> import bigmodels
    >>> model = bigmodels.create_model("googlenet_mini", aux_logits=True)
    >>> logits, aux1, aux2 = model.forward_aux(torch.zeros(2, 1, 8, 8))
    >>> aux1.shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check_positive
from ..errors import ConfigError, DataError
from ..nn import check_image_input
from ..registry import register_family, register_model
from ._inception_specs import GOOGLENET_STAGES, V3_MIXED

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

# ----------------------------------------------------------------------------------------------------------- configs


def _check_probability(owner: str, key: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{owner}.{key}={value!r} must be in [0, 1) (a dropout probability)")


@dataclass
class _InceptionConfig:
    """Fields both networks share; each subclass names itself in ``family`` for error messages."""

    family: ClassVar[str] = "inception"

    num_classes: int = 1000  # 0: no classifier (forward returns pooled features)
    in_chans: int = 3
    img_size: int = 224  # nominal input side (the network itself is size-agnostic above a minimum)
    aux_logits: bool = True  # build the auxiliary heads (trained through forward_aux)
    transform_input: bool = False  # re-normalise ImageNet-normalised input to (x - 0.5) / 0.5, as torchvision
    dropout: float = 0.2  # before the classifier
    init_weights: bool = True  # torchvision's truncated-normal init (False: PyTorch's defaults)

    def __post_init__(self) -> None:
        owner = self.family
        check_positive(owner, "num_classes", self.num_classes, allow_zero=True)
        check_positive(owner, "in_chans", self.in_chans)
        check_positive(owner, "img_size", self.img_size)
        _check_probability(owner, "dropout", self.dropout)
        if self.transform_input and self.in_chans != 3:
            raise ConfigError(
                f"{owner}.transform_input=True re-normalises 3 ImageNet channels but in_chans={self.in_chans}; "
                "set transform_input=false or in_chans=3"
            )
        low = self.min_side(aux=self.aux_logits)
        if self.img_size < low:
            bare = self.min_side(aux=False)
            fix = "set aux_logits=false or " if self.img_size >= bare else (
                f"resize the images (data.img_size={low}, or {bare} with aux_logits=false) or ")
            raise ConfigError(
                f"{owner}.img_size={self.img_size} is too small: this network needs inputs of at least "
                f"{low}x{low}; {fix}use img_size >= {low}"
            )

    def min_side(self, aux: bool) -> int:
        """The smallest input side the trunk (or, with ``aux``, the auxiliary heads too) accepts."""
        raise NotImplementedError


@dataclass
class GoogLeNetConfig(_InceptionConfig):
    family: ClassVar[str] = "googlenet"

    aux_dropout: float = 0.7  # inside each auxiliary head
    small_input: bool = False  # conv1 stride 1 and no maxpool1/maxpool2: for 8x8 to 32x32 images
    width_mult: float = 1.0  # scales every width (multiples of 8, at least 8); != 1 breaks weight compatibility

    def __post_init__(self) -> None:
        check_positive(self.family, "width_mult", self.width_mult)
        _check_probability(self.family, "aux_dropout", self.aux_dropout)
        super().__post_init__()

    def min_side(self, aux: bool) -> int:
        # the ceil-mode max-pools need >= 2 px in front of each (the aux heads pool adaptively to 4x4)
        return 2 if self.small_input else 15


@dataclass
class InceptionV3Config(_InceptionConfig):
    family: ClassVar[str] = "inception_v3"

    img_size: int = 299
    dropout: float = 0.5

    def min_side(self, aux: bool) -> int:
        # valid convs and pools shrink 299 -> 149 -> 147 -> 73 -> 71 -> 35 -> 17 -> 8: Mixed_7a needs 3x3 in
        # front of it (75 px in), the aux head (5x5 avg-pool stride 3, then a 5x5 conv) the full 17x17 of 299 px
        return 299 if aux else 75


# ------------------------------------------------------------------------------------------------- shared blocks


class BasicConv2d(nn.Module):
    """conv (no bias: batch norm follows) -> batch norm (eps 1e-3, as the TF originals) -> ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _classifier(in_features: int, num_classes: int) -> nn.Module:
    return nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()


def _cat(*branches: torch.Tensor) -> torch.Tensor:
    return torch.cat(branches, 1)  # (B, sum C_i, H, W)


# ------------------------------------------------------------------------------------------- GoogLeNet blocks


class Inception(nn.Module):
    """GoogLeNet's block: 1x1 | 1x1 -> 3x3 | 1x1 -> "5x5" | 3x3 max-pool -> 1x1, concatenated.

    The "5x5" branch is a 3x3 conv, as in torchvision (a known slip kept for weight compatibility).
    """

    def __init__(self, in_ch: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int,
                 pool_proj: int) -> None:
        super().__init__()
        self.branch1 = BasicConv2d(in_ch, ch1x1, 1)
        self.branch2 = nn.Sequential(BasicConv2d(in_ch, ch3x3red, 1), BasicConv2d(ch3x3red, ch3x3, 3, padding=1))
        self.branch3 = nn.Sequential(BasicConv2d(in_ch, ch5x5red, 1), BasicConv2d(ch5x5red, ch5x5, 3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True),
                                     BasicConv2d(in_ch, pool_proj, 1))
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _cat(self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x))


class GoogLeNetAux(nn.Module):
    """Auxiliary classifier on inception4a / 4d: pool to 4x4 -> 1x1 conv -> fc1 + ReLU -> dropout -> fc2."""

    def __init__(self, in_ch: int, num_classes: int, width: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.conv = BasicConv2d(in_ch, width, 1)
        self.fc1 = nn.Linear(width * 4 * 4, hidden)
        self.fc2 = _classifier(hidden, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(F.adaptive_avg_pool2d(x, (4, 4))).flatten(1)  # (B, width * 16)
        return self.fc2(self.dropout(F.relu(self.fc1(x), inplace=True)))

    def reset_classifier(self, num_classes: int) -> None:
        self.fc2 = _classifier(self.fc1.out_features, num_classes)


# ----------------------------------------------------------------------------------------- Inception-v3 blocks
# Paper figure numbers: A = Fig. 5 (35x35), B = grid reduction 35 -> 17, C = Fig. 6 (17x17, factorised 7x7),
# D = grid reduction 17 -> 8, E = Fig. 7 (8x8, expanded filter banks).


class InceptionA(nn.Module):
    def __init__(self, in_ch: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_ch, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_ch, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_ch, pool_features, 1)
        self.out_channels = 64 + 64 + 96 + pool_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _cat(
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1)),
        )


class InceptionB(nn.Module):
    def __init__(self, in_ch: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_ch, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)
        self.out_channels = 384 + 96 + in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _cat(
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        )


class InceptionC(nn.Module):
    def __init__(self, in_ch: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        row, col = dict(kernel_size=(1, 7), padding=(0, 3)), dict(kernel_size=(7, 1), padding=(3, 0))
        self.branch1x1 = BasicConv2d(in_ch, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_ch, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, **row)
        self.branch7x7_3 = BasicConv2d(c7, 192, **col)
        self.branch7x7dbl_1 = BasicConv2d(in_ch, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, **row)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, **row)
        self.branch_pool = BasicConv2d(in_ch, 192, 1)
        self.out_channels = 4 * 192

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dbl = self.branch7x7dbl_3(self.branch7x7dbl_2(self.branch7x7dbl_1(x)))
        return _cat(
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            self.branch7x7dbl_5(self.branch7x7dbl_4(dbl)),
            self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1)),
        )


class InceptionD(nn.Module):
    def __init__(self, in_ch: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_ch, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_ch, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)
        self.out_channels = 320 + 192 + in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return _cat(self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2))


class InceptionE(nn.Module):
    def __init__(self, in_ch: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_ch, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_ch, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_ch, 192, 1)
        self.out_channels = 320 + 2 * 384 + 2 * 384 + 192

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return _cat(
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl),
            self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1)),
        )


class InceptionV3Aux(nn.Module):
    """Auxiliary classifier on Mixed_6e (17x17): 5x5 avg-pool stride 3 -> 1x1 conv -> 5x5 conv -> fc."""

    def __init__(self, in_ch: int, num_classes: int) -> None:
        super().__init__()
        self.conv0 = BasicConv2d(in_ch, 128, 1)
        self.conv1 = BasicConv2d(128, 768, 5)
        self.fc = _classifier(768, num_classes)
        self.fc.stddev = 0.001  # torchvision's init; its conv1.stddev = 0.01 sits on the wrapper and never applies

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv0(F.avg_pool2d(x, 5, stride=3))  # (B, 128, 5, 5)
        x = F.adaptive_avg_pool2d(self.conv1(x), 1).flatten(1)  # (B, 768)
        return self.fc(x)

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = _classifier(768, num_classes)


V3_BLOCKS = {"A": InceptionA, "B": InceptionB, "C": InceptionC, "D": InceptionD, "E": InceptionE}


# ------------------------------------------------------------------------------------------- the shared model


class _InceptionNet(nn.Module):
    """The walk both networks share: ``stages`` are tuples of module names run in order (one feature map
    per stage); ``aux_taps`` maps a module name to the auxiliary head that reads its output."""

    config: _InceptionConfig
    stages: tuple[tuple[str, ...], ...]
    aux_taps: dict[str, str]

    def _init_head(self, num_features: int, std: float) -> None:
        cfg = self.config
        self.num_features = num_features
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc = _classifier(num_features, cfg.num_classes)
        if cfg.init_weights:  # torchvision: truncated normal (bounds +-2, absolute), a per-layer `stddev` wins
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.trunc_normal_(m.weight, std=float(getattr(m, "stddev", std)), a=-2, b=2)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

    def _check_input(self, x: torch.Tensor, aux: bool) -> None:
        check_image_input(x, self.config.in_chans)
        low = self.config.min_side(aux)
        if min(x.shape[-2:]) < low:
            what = "the auxiliary head (forward_aux) needs" if aux else "this network needs"
            raise DataError(
                f"{self.config.family}: got {x.shape[-2]}x{x.shape[-1]} images but {what} at least {low}x{low}; "
                f"resize the images (data.img_size={max(low, self.config.img_size)})"
            )

    def _walk(self, x: torch.Tensor, with_aux: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if self.config.transform_input:  # ImageNet-normalised -> (x - 0.5) / 0.5 per channel, as torchvision
            scale = x.new_tensor([s / 0.5 for s in _IMAGENET_STD]).view(1, 3, 1, 1)
            shift = x.new_tensor([(m - 0.5) / 0.5 for m in _IMAGENET_MEAN]).view(1, 3, 1, 1)
            x = x * scale + shift
        maps, aux = [], []
        for stage in self.stages:
            for name in stage:
                x = getattr(self, name)(x)
                if with_aux and name in self.aux_taps:
                    aux.append(getattr(self, self.aux_taps[name])(x))  # (B, num_classes)
            maps.append(x)  # (B, C_i, H_i, W_i)
        return maps, aux

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The feature map after each stage, [(B, C_i, H_i, W_i), ...]: strides 4, 8, 16, 32 for GoogLeNet
        (1, 1, 2, 4 with small_input), 2, 4, 8, 16, 32 for Inception-v3 (timm's feature points)."""
        self._check_input(x, aux=False)
        return self._walk(x, with_aux=False)[0]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_intermediates(x)[-1]  # (B, num_features, H/32, W/32)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.avgpool(feats).flatten(1)))  # (B, num_classes) or (B, num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(main logits, *auxiliary logits in network order), in any mode; for the auxiliary losses."""
        if not self.config.aux_logits:
            raise ConfigError(f"{self.config.family} was built with aux_logits=False; build it with aux_logits=True")
        self._check_input(x, aux=True)
        maps, aux = self._walk(x, with_aux=True)
        return (self.forward_head(maps[-1]), *aux)

    def reset_classifier(self, num_classes: int) -> None:
        """New classifiers (main and auxiliary) for ``num_classes`` (0: identity, heads return features)."""
        check_positive(self.config.family, "num_classes", num_classes, allow_zero=True)
        self.config.num_classes = num_classes
        like = next(self.parameters())  # new layers on the model's device and dtype
        self.fc = _classifier(self.num_features, num_classes).to(like)
        for head in self.aux_taps.values():
            getattr(self, head).reset_classifier(num_classes)
            getattr(self, head).to(like)


def _width(channels: int, mult: float) -> int:
    """``channels * mult`` rounded half-up to a multiple of 8, at least 8 (width 1.0 keeps torchvision's)."""
    return max(8, int(channels * mult / 8 + 0.5) * 8)


class GoogLeNet(_InceptionNet):
    """GoogLeNet (Inception v1) as torchvision builds it; see the module docstring for the auxiliary heads.

    >>> GoogLeNet(GoogLeNetConfig(num_classes=10, width_mult=0.25))(torch.zeros(1, 3, 64, 64)).shape
    torch.Size([1, 10])
    """

    def __init__(self, config: GoogLeNetConfig) -> None:
        super().__init__()
        self.config = config
        w = lambda c: _width(c, config.width_mult)  # noqa: E731
        stride = 1 if config.small_input else 2
        pool = (lambda: nn.Identity()) if config.small_input else (lambda: nn.MaxPool2d(3, 2, ceil_mode=True))
        self.conv1 = BasicConv2d(config.in_chans, w(64), 7, stride=stride, padding=3)
        self.maxpool1 = pool()
        self.conv2 = BasicConv2d(w(64), w(64), 1)
        self.conv3 = BasicConv2d(w(64), w(192), 3, padding=1)
        # output shapes at 224x224 and width 1 (small_input: strides 1, 1, 2, 4 instead of 4, 8, 16, 32)
        stages, width = [("conv1", "maxpool1", "conv2", "conv3")], w(192)  # (B, 192, 56, 56)
        for pool_name, pool_kernel, blocks in GOOGLENET_STAGES:  # (B, 480, 28, 28) (B, 832, 14, 14) (B, 1024, 7, 7)
            opening = pool() if pool_name == "maxpool2" else nn.MaxPool2d(pool_kernel, 2, ceil_mode=True)
            self.add_module(pool_name, opening)
            for name, widths in blocks.items():
                self.add_module(name, Inception(width, *map(w, widths)))
                width = getattr(self, name).out_channels
            stages.append((pool_name, *blocks))
        self.stages = tuple(stages)
        self.aux_taps = {"inception4a": "aux1", "inception4d": "aux2"} if config.aux_logits else {}
        for tap, head in self.aux_taps.items():
            in_ch = getattr(self, tap).out_channels
            self.add_module(head, GoogLeNetAux(in_ch, config.num_classes, w(128), w(1024), config.aux_dropout))
        self._init_head(width, std=0.01)


class InceptionV3(_InceptionNet):
    """Inception-v3 as torchvision builds it (299x299 input; the main path accepts >= 75).

    >>> InceptionV3(InceptionV3Config(num_classes=10, aux_logits=False)).eval()(torch.zeros(1, 3, 75, 75)).shape
    torch.Size([1, 10])
    """

    def __init__(self, config: InceptionV3Config) -> None:
        super().__init__()
        self.config = config
        self.Conv2d_1a_3x3 = BasicConv2d(config.in_chans, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.maxpool1 = nn.MaxPool2d(3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.maxpool2 = nn.MaxPool2d(3, stride=2)
        width, mixed = 192, []
        for stage in V3_MIXED:
            for name, kind, kwargs in stage:
                self.add_module(name, V3_BLOCKS[kind](width, **kwargs))
                width = getattr(self, name).out_channels
            mixed.append(tuple(name for name, _, _ in stage))
        self.stages = (  # output shapes at 299x299
            ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"),  # (B, 64, 147, 147)
            ("maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3"),  # (B, 192, 71, 71)
            ("maxpool2", *mixed[0]),  # (B, 288, 35, 35)
            mixed[1],  # (B, 768, 17, 17)
            mixed[2],  # (B, 2048, 8, 8)
        )
        self.aux_taps = {"Mixed_6e": "AuxLogits"} if config.aux_logits else {}
        if config.aux_logits:
            self.AuxLogits = InceptionV3Aux(self.Mixed_6e.out_channels, config.num_classes)
        self._init_head(width, std=0.1)


register_family("googlenet", GoogLeNetConfig, GoogLeNet)
register_family("inception_v3", InceptionV3Config, InceptionV3)
register_model(
    "googlenet", family="googlenet", task="image_classification", config=GoogLeNetConfig(), compare=False,
    description="GoogLeNet (Inception v1), torchvision-compatible: 6.6M parameters + 6.4M in the aux heads",
)
register_model(
    "inception_v3", family="inception_v3", task="image_classification", config=InceptionV3Config(), compare=False,
    description="Inception-v3 at 299x299, torchvision-compatible: 23.8M parameters + 3.3M in the aux head",
)
register_model(
    "googlenet_mini", family="googlenet", task="image_classification",
    config=GoogLeNetConfig(
        num_classes=10, in_chans=1, img_size=8, aux_logits=False, small_input=True, width_mult=0.125,
    ),
    description="GoogLeNet at 1/8 width (105k parameters) without the stem's downsampling, for 8x8 digits",
)
