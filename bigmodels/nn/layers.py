"""Small shared layers: activations and norms by name, a multi-layer perceptron, input checks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError, DataError

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU, "sigmoid": nn.Sigmoid}
_NORMS_1D = {"none": None, "batchnorm": nn.BatchNorm1d, "layernorm": nn.LayerNorm}


def get_activation(name: str) -> nn.Module:
    """``"relu"`` -> ``nn.ReLU()``; unknown names raise with the valid ones."""
    if name not in _ACTIVATIONS:
        raise ConfigError(f"activation {name!r} is not valid; choose one of {', '.join(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


def get_norm1d(name: str, dim: int) -> nn.Module | None:
    if name not in _NORMS_1D:
        raise ConfigError(f"norm {name!r} is not valid; choose one of {', '.join(_NORMS_1D)}")
    cls = _NORMS_1D[name]
    return None if cls is None else cls(dim)


class MLP(nn.Module):
    """Linear -> [norm] -> activation -> [dropout], once per hidden width, then a final Linear ``fc``.

    >>> MLP(784, (256, 128), 10)(torch.randn(2, 784)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        *,
        activation: str = "relu",
        norm: str = "none",
        dropout: float = 0.0,
    ) -> None:
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers.append(nn.Linear(width, h))
            norm_layer = get_norm1d(norm, h)
            if norm_layer is not None:
                layers.append(norm_layer)
            layers.append(get_activation(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        super().__init__()
        self.layers = nn.Sequential(*layers)
        self.num_features = width
        self.fc = nn.Linear(width, out_features) if out_features > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layers(x))


def check_image_input(x: torch.Tensor, in_chans: int, img_size: int | None = None) -> None:
    """Raise a :class:`DataError` naming the expected shape when ``x`` is not (B, in_chans, H, W)."""
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise DataError(
            f"expected images of shape (batch, {in_chans}, H, W), got {tuple(x.shape)}; convert the images to "
            f"{in_chans} channel(s) or build the model with in_chans={x.shape[1] if x.dim() == 4 else '?'}"
        )
    if img_size is not None and tuple(x.shape[-2:]) != (img_size, img_size):
        raise DataError(
            f"this model takes {img_size}x{img_size} images, got {x.shape[-2]}x{x.shape[-1]}; resize the images "
            f"(data.img_size={img_size}) or build the model with img_size={x.shape[-1]}"
        )
