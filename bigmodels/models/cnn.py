"""Plain convolutional networks: stages of [conv -> (batch norm) -> activation] x n -> max-pool, then an
MLP head on the flattened (or globally pooled) feature map.

The ``cnn_keras`` preset is the network of the source article, layer for layer::

    Conv2D(32, 3x3, relu) -> MaxPool(2) -> Flatten -> Dense(64, relu) -> Dense(10, softmax)  on 64x64x3

with the same 1,969,738 parameters Keras counts. (It returns logits: the softmax lives in the loss.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import check_choice, check_positive
from ..errors import ConfigError
from ..nn import MLP, check_image_input, get_activation
from ..registry import register_family, register_model


@dataclass
class CNNConfig:
    in_chans: int = 3
    img_size: int = 64
    num_classes: int = 10
    channels: tuple[int, ...] = (32,)  # one stage per entry
    convs_per_stage: int = 1
    kernel_size: int = 3
    padding: str = "valid"  # valid (no padding, as Keras' default) | same
    norm: str = "none"  # none | batchnorm
    activation: str = "relu"
    pool: int = 2  # max-pool window and stride after each stage; 1 disables
    global_pool: bool = False  # average the last feature map instead of flattening it
    hidden: tuple[int, ...] = (64,)
    dropout: float = 0.0  # before each head layer

    def __post_init__(self) -> None:
        check_choice("cnn", "padding", self.padding, ("valid", "same"))
        check_choice("cnn", "norm", self.norm, ("none", "batchnorm"))
        for key in ("in_chans", "img_size", "convs_per_stage", "kernel_size", "pool"):
            check_positive("cnn", key, getattr(self, key))
        check_positive("cnn", "num_classes", self.num_classes, allow_zero=True)  # 0: no classifier


def _conv_stage(in_ch: int, out_ch: int, cfg: CNNConfig) -> nn.Sequential:
    layers: list[nn.Module] = []
    pad = cfg.kernel_size // 2 if cfg.padding == "same" else 0
    for i in range(cfg.convs_per_stage):
        bias = cfg.norm == "none"  # a bias right before batch norm is redundant
        layers.append(nn.Conv2d(in_ch if i == 0 else out_ch, out_ch, cfg.kernel_size, padding=pad, bias=bias))
        if cfg.norm == "batchnorm":
            layers.append(nn.BatchNorm2d(out_ch))
        layers.append(get_activation(cfg.activation))
    if cfg.pool > 1:
        layers.append(nn.MaxPool2d(cfg.pool))
    return nn.Sequential(*layers)


def _output_side(cfg: CNNConfig) -> int:
    """Side of the last feature map: a valid k x k conv trims k-1 pixels, a pool divides (floor)."""
    side = cfg.img_size
    for _ in cfg.channels:
        if cfg.padding == "valid":
            side -= cfg.convs_per_stage * (cfg.kernel_size - 1)
        if side >= 1 and cfg.pool > 1:
            side //= cfg.pool
        if side < 1:
            raise ConfigError(
                f"cnn: img_size={cfg.img_size} is too small for {len(cfg.channels)} stages of "
                f"{cfg.padding} {cfg.kernel_size}x{cfg.kernel_size} convs and {cfg.pool}x{cfg.pool} pooling; "
                "use larger images (data.img_size), fewer channels entries, padding=same or pool=1"
            )
    return side


class CNN(nn.Module):
    """Convolutional classifier following the vision contract (features, head, reset_classifier).

    >>> CNN(CNNConfig()).forward(torch.zeros(1, 3, 64, 64)).shape
    torch.Size([1, 10])
    """

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        self.config = config
        widths = (config.in_chans, *config.channels)
        self.stages = nn.ModuleList(_conv_stage(a, b, config) for a, b in zip(widths, widths[1:], strict=False))
        side = _output_side(config)
        self.pool = nn.AdaptiveAvgPool2d(1) if config.global_pool else nn.Identity()
        self.num_features = widths[-1]
        flat = self.num_features * (1 if config.global_pool else side * side)
        self.head = MLP(flat, config.hidden, config.num_classes, activation=config.activation, dropout=config.dropout)

    def _run_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The feature map after each stage: [(B, C_i, H_i, W_i), ...]."""
        check_image_input(x, self.config.in_chans, self.config.img_size)
        return self._run_stages(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_intermediates(x)[-1]  # (B, C, H', W')

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(feats).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        self.config.num_classes = num_classes
        width = self.head.num_features
        self.head.fc = nn.Linear(width, num_classes) if num_classes > 0 else nn.Identity()


register_family("cnn", CNNConfig, CNN)
register_model(
    "cnn_keras", family="cnn", task="image_classification", config=CNNConfig(),
    description="the source article's Keras CNN: Conv32 3x3 -> MaxPool2 -> Dense64 -> Dense10 on 64x64x3",
)
register_model(
    "cnn_small", family="cnn", task="image_classification",
    config=CNNConfig(in_chans=1, img_size=8, channels=(32, 64), padding="same", norm="batchnorm", hidden=(128,)),
    description="two conv stages with batch norm, for small images",
)
register_model(
    "cnn_mnist", family="cnn", task="image_classification",
    config=CNNConfig(
        in_chans=1, img_size=28, channels=(32, 64), convs_per_stage=2, padding="same", norm="batchnorm",
        hidden=(256,), dropout=0.3,
    ),
    description="2x(conv-conv-pool) with batch norm + 256-wide head: >= 99.5% on MNIST", compare=False,
)
