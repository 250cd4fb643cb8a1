"""ResNet v1.5 (He et al. 2016, "Deep Residual Learning for Image Recognition"), as torchvision builds it.

A stem (7x7/2 conv + 3x3/2 max-pool for ImageNet, or one 3x3/1 conv for small images), four stages of
residual blocks (stages 2-4 halve the resolution), global average pooling and a linear classifier::

    x -> conv1 -> bn1 -> relu -> maxpool -> layer1 -> layer2 -> layer3 -> layer4 -> avgpool -> fc

"v1.5": in the bottleneck the stride sits on the 3x3 conv (conv2), not on the first 1x1 conv, as in
torchvision and NVIDIA's recipes. ResNeXt (Xie et al. 2017) and wide ResNets (Zagoruyko & Komodakis 2016)
are the same network with other ``groups`` / ``width_per_group``: data, not code. Parameter and buffer
names are torchvision's, so its state dicts load with ``strict=True``.

>>> import bigmodels
>>> bigmodels.create_model("resnet_mini").eval()(torch.zeros(1, 1, 8, 8)).shape
torch.Size([1, 10])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..config import check_choice, check_positive
from ..errors import ConfigError
from ..nn import check_image_input
from ..registry import register_family, register_model

NormLayer = Callable[[int], nn.Module]


@dataclass
class ResNetConfig:
    block: str = "basic"  # basic (2 x 3x3 conv, expansion 1) | bottleneck (1x1 -> 3x3 -> 1x1, expansion 4)
    layers: tuple[int, int, int, int] = (2, 2, 2, 2)  # blocks per stage
    num_classes: int = 1000  # 0: no classifier, forward_head returns pooled (B, num_features)
    in_chans: int = 3
    stem: str = "imagenet"  # imagenet: 7x7/2 conv + 3x3/2 max-pool | small: 3x3/1 conv, no max-pool
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)  # stage widths before the block expansion
    groups: int = 1  # bottleneck only: grouped 3x3 conv (ResNeXt's cardinality)
    width_per_group: int = 64  # bottleneck only: inner width = widths[i] * width_per_group / 64 * groups
    zero_init_residual: bool = False  # start each block as the identity (Goyal et al. 2017)
    drop_rate: float = 0.0  # dropout before fc

    def __post_init__(self) -> None:
        self.layers, self.widths = tuple(self.layers), tuple(self.widths)
        check_choice("resnet", "block", self.block, ("basic", "bottleneck"))
        check_choice("resnet", "stem", self.stem, ("imagenet", "small"))
        for key in ("layers", "widths"):
            value = getattr(self, key)
            if len(value) != 4 or not all(isinstance(v, int) and v > 0 for v in value):
                raise ConfigError(f"resnet.{key}={value!r} must be 4 positive integers, one per stage")
        for key in ("in_chans", "groups", "width_per_group"):
            check_positive("resnet", key, getattr(self, key))
        check_positive("resnet", "num_classes", self.num_classes, allow_zero=True)
        if not 0.0 <= self.drop_rate < 1.0:
            raise ConfigError(f"resnet.drop_rate={self.drop_rate!r} must be in [0, 1)")
        if self.block == "basic" and (self.groups != 1 or self.width_per_group != 64):
            raise ConfigError(
                f"resnet: block='basic' supports only groups=1 and width_per_group=64, got groups={self.groups}, "
                f"width_per_group={self.width_per_group}; use block='bottleneck' (ResNeXt / wide ResNet) "
                "or the defaults groups=1, width_per_group=64"
            )


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, groups=groups, bias=False)  # BN follows


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs plus the shortcut: relu(bn2(conv2(relu(bn1(conv1(x))))) + downsample(x))."""

    expansion = 1

    def __init__(
        self, in_ch: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
        groups: int = 1, width_per_group: int = 64, norm: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        assert groups == 1 and width_per_group == 64, "checked by ResNetConfig"
        self.conv1 = conv3x3(in_ch, planes, stride)
        self.bn1 = norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)  # (B, planes, H/s, W/s)
        out = self.relu(self.bn1(self.conv1(x)))  # (B, planes, H/s, W/s)
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (strided, grouped) -> 1x1 expand (x4), plus the shortcut (v1.5: stride on the 3x3)."""

    expansion = 4

    def __init__(
        self, in_ch: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
        groups: int = 1, width_per_group: int = 64, norm: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        width = int(planes * (width_per_group / 64.0)) * groups  # torchvision's inner width
        self.conv1 = conv1x1(in_ch, width)
        self.bn1 = norm(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = norm(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)  # (B, 4*planes, H/s, W/s)
        out = self.relu(self.bn1(self.conv1(x)))  # (B, width, H, W)
        out = self.relu(self.bn2(self.conv2(out)))  # (B, width, H/s, W/s)
        out = self.bn3(self.conv3(out))  # (B, 4*planes, H/s, W/s)
        return self.relu(out + identity)


BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """ResNet following the vision contract (intermediates, features, head, reset_classifier).

    >>> m = ResNet(ResNetConfig(stem="small", layers=(1, 1, 1, 1), widths=(8, 16, 32, 64), num_classes=3)).eval()
    >>> [tuple(f.shape) for f in m.forward_intermediates(torch.zeros(1, 3, 8, 8))]
    [(1, 8, 8, 8), (1, 16, 4, 4), (1, 32, 2, 2), (1, 64, 1, 1)]
    """

    def __init__(self, config: ResNetConfig, norm: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        self.config = config
        block = BLOCKS[config.block]
        stem_width = config.widths[0]
        if config.stem == "imagenet":  # (B, C, H, W) -> (B, 64, H/4, W/4)
            self.conv1 = nn.Conv2d(config.in_chans, stem_width, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        else:  # small images (8x8 .. 32x32) keep their resolution: (B, C, H, W) -> (B, w0, H, W)
            self.conv1 = conv3x3(config.in_chans, stem_width)
            self.maxpool = nn.Identity()
        self.bn1 = norm(stem_width)
        self.relu = nn.ReLU(inplace=True)

        in_ch = stem_width
        for i, (planes, blocks) in enumerate(zip(config.widths, config.layers, strict=True)):
            stride = 1 if i == 0 else 2  # stages 2-4 halve the resolution
            out_ch = planes * block.expansion
            downsample = None
            if stride != 1 or in_ch != out_ch:  # project the shortcut to the new shape
                downsample = nn.Sequential(conv1x1(in_ch, out_ch, stride), norm(out_ch))
            kw = dict(groups=config.groups, width_per_group=config.width_per_group, norm=norm)
            stage = [block(in_ch, planes, stride, downsample, **kw)]
            stage += [block(out_ch, planes, **kw) for _ in range(1, blocks)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
            in_ch = out_ch

        self.num_features = in_ch
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(config.drop_rate)
        self.fc: nn.Module = nn.Linear(in_ch, config.num_classes) if config.num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's: He init for convs (fan_out), BN as the identity; the fc keeps PyTorch's default.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if self.config.zero_init_residual:  # each residual branch starts at 0: the block is the identity
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    @property
    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The feature map after each of the 4 stages: [(B, C_i, H_i, W_i), ...]."""
        check_image_input(x, self.config.in_chans)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, w0, H/4, W/4) or (B, w0, H, W) small
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_intermediates(x)[-1]  # (B, num_features, H', W')

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(feats).flatten(1)  # (B, num_features)
        return self.fc(self.drop(x))  # (B, num_classes), or (B, num_features) when num_classes == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        check_positive("resnet", "num_classes", num_classes, allow_zero=True)
        self.config.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


register_family("resnet", ResNetConfig, ResNet)

_IMAGENET = {  # torchvision's builders (weights-compatible); ImageNet-sized, so left out of `compare`
    "resnet18": (dict(block="basic", layers=(2, 2, 2, 2)), "ResNet-18"),
    "resnet34": (dict(block="basic", layers=(3, 4, 6, 3)), "ResNet-34"),
    "resnet50": (dict(block="bottleneck", layers=(3, 4, 6, 3)), "ResNet-50 (v1.5)"),
    "resnet101": (dict(block="bottleneck", layers=(3, 4, 23, 3)), "ResNet-101 (v1.5)"),
    "resnet152": (dict(block="bottleneck", layers=(3, 8, 36, 3)), "ResNet-152 (v1.5)"),
    "resnext50_32x4d": (dict(block="bottleneck", layers=(3, 4, 6, 3), groups=32, width_per_group=4),
                        "ResNeXt-50 32x4d (Xie et al. 2017)"),
    "wide_resnet50_2": (dict(block="bottleneck", layers=(3, 4, 6, 3), width_per_group=128),
                        "Wide ResNet-50-2: bottlenecks twice as wide (Zagoruyko & Komodakis 2016)"),
}
for _name, (_kw, _desc) in _IMAGENET.items():
    register_model(
        _name, family="resnet", task="image_classification", config=ResNetConfig(**_kw),
        description=f"{_desc}, torchvision's layout and names; 224x224 RGB, 1000 classes", compare=False,
    )

register_model(
    "resnet_mini", family="resnet", task="image_classification",
    config=ResNetConfig(stem="small", layers=(1, 1, 1, 1), widths=(16, 32, 64, 128), in_chans=1,
                        num_classes=10),
    description="one basic block per stage, widths 16-128, 3x3 stem: small grayscale images (8x8 digits)",
)
register_model(
    "resnet_mnist", family="resnet", task="image_classification",
    config=ResNetConfig(stem="small", layers=(2, 2, 2, 2), widths=(16, 32, 64, 128), in_chans=1,
                        num_classes=10),
    description="ResNet-18's depth at quarter width with a 3x3 stem: 28x28 MNIST on a CPU (0.7M)", compare=False,
)
