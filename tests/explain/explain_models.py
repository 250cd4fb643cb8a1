"""Tiny hand-built models whose explanations are known: they honour the vision contract and carry a ModelInfo,
so ``explain`` treats them as any registered model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bigmodels.models._contract import ModelInfo, set_model_info


@dataclass
class TinyConfig:
    in_chans: int = 2
    img_size: int = 16
    num_classes: int = 2


class PlantedCNN(nn.Module):
    """Two detectors: feature map k (B, 2, 8, 8) is input channel k averaged over 2 x 2 cells (ReLU); class k's
    logit is the mean of map k. A bright patch in channel k is the only evidence for class k."""

    def __init__(self) -> None:
        super().__init__()
        self.config = TinyConfig()
        self.conv = nn.Conv2d(2, 2, 2, stride=2, bias=False)
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0] = 0.25
            self.conv.weight[1, 1] = 0.25
            self.fc.weight.copy_(torch.eye(2))
            self.fc.bias.zero_()
        set_model_info(self, ModelInfo("planted_cnn", "test", "image_classification"))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc(feats.mean(dim=(2, 3)))

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.forward_features(x)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = nn.Linear(2, num_classes)


class LinearImage(nn.Module):
    """Logits (sum(w * x), 0) over a 1 x 4 x 4 image: the attribution of pixel i is exactly w_i x_i."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.config = TinyConfig(in_chans=1, img_size=4)
        self.w = nn.Parameter(w.reshape(1, 1, 4, 4).clone())
        set_model_info(self, ModelInfo("linear_image", "test", "image_classification"))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.w).flatten(1)  # (B, 16): no spatial layout

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        s = feats.sum(1, keepdim=True)
        return torch.cat([s, torch.zeros_like(s)], dim=1)

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.forward_features(x)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        raise NotImplementedError


class KinkImage(LinearImage):
    """Logits (relu(sum(w * x) - 1), 0): along integrated gradients' path the gradient jumps from 0 to w, a step
    that a quadrature of few points integrates badly."""

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        s = torch.relu(feats.sum(1, keepdim=True) - 1.0)
        return torch.cat([s, torch.zeros_like(s)], dim=1)
