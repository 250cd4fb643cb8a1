"""The EfficientNet family as data (for ``efficientnet.py``): the B0 stage table and each variant's scaling.

Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", Table 1 and the
compound-scaling coefficients of the reference implementation (tensorflow/tpu ``efficientnet_builder.py``;
the Lite variants from ``lite/efficientnet_lite_builder.py``).
"""

from __future__ import annotations

# EfficientNet-B0 after its 3x3/2 stem (32 channels), one row per stage of MBConv blocks:
# (expand ratio, depthwise kernel, stride of the stage's first block, output channels, blocks).
# A stage's input is the previous stage's output; the 1x1 head (1280) follows the last stage.
B0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),  # MBConv1, 3x3 -> 112x112 at 224 px
    (6, 3, 2, 24, 2),  # MBConv6, 3x3 -> 56x56
    (6, 5, 2, 40, 2),  # MBConv6, 5x5 -> 28x28
    (6, 3, 2, 80, 3),  # MBConv6, 3x3 -> 14x14
    (6, 5, 1, 112, 3),  # MBConv6, 5x5 -> 14x14
    (6, 5, 2, 192, 4),  # MBConv6, 5x5 -> 7x7
    (6, 3, 1, 320, 1),  # MBConv6, 3x3 -> 7x7
)

# name -> (width multiplier, depth multiplier, resolution, dropout before the classifier)
B_VARIANTS: dict[str, tuple[float, float, int, float]] = {
    "efficientnet_b0": (1.0, 1.0, 224, 0.2),
    "efficientnet_b1": (1.0, 1.1, 240, 0.2),
    "efficientnet_b2": (1.1, 1.2, 260, 0.3),
    "efficientnet_b3": (1.2, 1.4, 300, 0.3),
    "efficientnet_b4": (1.4, 1.8, 380, 0.4),
    "efficientnet_b5": (1.6, 2.2, 456, 0.4),
    "efficientnet_b6": (1.8, 2.6, 528, 0.5),
    "efficientnet_b7": (2.0, 3.1, 600, 0.5),
}
# torchvision builds B5-B7 with TensorFlow's batch-norm settings (the weights were ported from TF); B0-B4 with
# PyTorch's defaults (eps 1e-5, momentum 0.1)
TF_BATCH_NORM: dict[str, float] = {"bn_eps": 1e-3, "bn_momentum": 0.01}
B_TF_BATCH_NORM = ("efficientnet_b5", "efficientnet_b6", "efficientnet_b7")

# EfficientNet-Lite (for mobile accelerators and integer quantisation): no squeeze-and-excitation, ReLU6
# instead of swish, the stem and head widths and the first and last stage's depth not scaled.
LITE_VARIANTS: dict[str, tuple[float, float, int, float]] = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
    "efficientnet_lite3": (1.2, 1.4, 280, 0.3),
    "efficientnet_lite4": (1.4, 1.8, 300, 0.3),
}

# A few thousand parameters for 8x8 grayscale digits: 3x3/1 stem, three short stages.
MINI_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 8, 1),
    (4, 3, 2, 16, 1),
    (4, 3, 2, 24, 1),
)
