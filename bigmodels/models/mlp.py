"""Multi-layer perceptron for image classification: flatten the image, then a stack of Linear layers."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import check_positive
from ..nn import MLP, check_image_input
from ..registry import register_family, register_model


@dataclass
class MLPConfig:
    in_chans: int = 1
    img_size: int = 8
    num_classes: int = 10
    hidden: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    norm: str = "none"  # none | batchnorm | layernorm
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for key in ("in_chans", "img_size"):
            check_positive("mlp", key, getattr(self, key))
        check_positive("mlp", "num_classes", self.num_classes, allow_zero=True)  # 0: no classifier


class MLPClassifier(nn.Module):
    """Flatten (B, C, H, W) -> hidden layers -> class logits.

    >>> MLPClassifier(MLPConfig())(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        in_features = config.in_chans * config.img_size**2
        self.mlp = MLP(
            in_features, config.hidden, config.num_classes,
            activation=config.activation, norm=config.norm, dropout=config.dropout,
        )
        self.num_features = self.mlp.num_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_image_input(x, self.config.in_chans, self.config.img_size)
        return self.mlp.forward_features(x.flatten(1))  # (B, num_features)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.mlp.fc(feats)

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The activations after each hidden layer, [(B, hidden_i), ...] (the flattened image when there is none);
        the last is :meth:`forward_features`."""
        check_image_input(x, self.config.in_chans, self.config.img_size)
        x, layers, maps = x.flatten(1), list(self.mlp.layers), []
        for i, layer in enumerate(layers):
            x = layer(x)
            if i + 1 == len(layers) or isinstance(layers[i + 1], nn.Linear):  # a hidden layer ends here
                maps.append(x)
        return maps or [x]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        self.config.num_classes = num_classes
        self.mlp.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


register_family("mlp", MLPConfig, MLPClassifier)
register_model(
    "mlp_small", family="mlp", task="image_classification", config=MLPConfig(hidden=(256, 256)),
    description="2 hidden layers of 256, ReLU",
)
register_model(
    "mlp_mnist", family="mlp", task="image_classification",
    config=MLPConfig(img_size=28, hidden=(512, 512), dropout=0.2),
    description="2x512 MLP with dropout for 28x28 digits", compare=False,
)
