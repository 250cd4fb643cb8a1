"""Block widths of the Inception family (data for ``inception.py``); names are torchvision's module names."""

from __future__ import annotations

# GoogLeNet (Szegedy et al. 2014, Table 1), one entry per stage after the stem:
# (the max-pool that opens the stage, its kernel (stride 2, ceil mode), {block: widths}); widths are
# (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj) and a block's input is the previous block's output.
GOOGLENET_STAGES: tuple[tuple[str, int, dict[str, tuple[int, int, int, int, int, int]]], ...] = (
    ("maxpool2", 3, {
        "inception3a": (64, 96, 128, 16, 32, 32),  # -> 256
        "inception3b": (128, 128, 192, 32, 96, 64),  # -> 480
    }),
    ("maxpool3", 3, {
        "inception4a": (192, 96, 208, 16, 48, 64),  # -> 512 (aux1 reads this)
        "inception4b": (160, 112, 224, 24, 64, 64),  # -> 512
        "inception4c": (128, 128, 256, 24, 64, 64),  # -> 512
        "inception4d": (112, 144, 288, 32, 64, 64),  # -> 528 (aux2 reads this)
        "inception4e": (256, 160, 320, 32, 128, 128),  # -> 832
    }),
    ("maxpool4", 2, {
        "inception5a": (256, 160, 320, 32, 128, 128),  # -> 832
        "inception5b": (384, 192, 384, 48, 128, 128),  # -> 1024
    }),
)

# Inception-v3 (Szegedy et al. 2015, Table 1), one tuple per stage of (name, block type, block arguments):
# A = 35x35 blocks, B = reduction to 17x17, C = 17x17 blocks with factorised 7x7s, D = reduction to 8x8, E = 8x8.
V3_MIXED: tuple[tuple[tuple[str, str, dict[str, int]], ...], ...] = (
    (  # 35x35 (opened by maxpool2)
        ("Mixed_5b", "A", {"pool_features": 32}),  # -> 256
        ("Mixed_5c", "A", {"pool_features": 64}),  # -> 288
        ("Mixed_5d", "A", {"pool_features": 64}),  # -> 288
    ),
    (  # 17x17
        ("Mixed_6a", "B", {}),  # -> 768
        ("Mixed_6b", "C", {"channels_7x7": 128}),
        ("Mixed_6c", "C", {"channels_7x7": 160}),
        ("Mixed_6d", "C", {"channels_7x7": 160}),
        ("Mixed_6e", "C", {"channels_7x7": 192}),  # -> 768 (the aux head reads this)
    ),
    (  # 8x8
        ("Mixed_7a", "D", {}),  # -> 1280
        ("Mixed_7b", "E", {}),  # -> 2048
        ("Mixed_7c", "E", {}),  # -> 2048
    ),
)
