"""torchvision checkpoints: plain state dicts (``.pth`` / ``.pt`` / ``.safetensors``) for the vision families.

The ResNet, GoogLeNet, Inception-v3 and ViT families name every parameter as torchvision does, so a
torchvision state dict loads strictly with no key map. What a state dict does not carry is the
architecture, so the registry name comes with it::

    >>> model = bigmodels.load("resnet50-0676ba61.pth", model="resnet50")          # doctest: +SKIP
    >>> model = load_torchvision("resnet50", "DEFAULT")   # ImageNet weights, downloaded once  # doctest: +SKIP

``WEIGHTS`` lists torchvision's published ImageNet-1k weights (file URL and the evaluation preprocessing
that goes with them), so that ``predict`` resizes, crops and normalises images as the weights expect.
Files load with ``torch.load(weights_only=True)`` (or safetensors): nothing is ever unpickled freely.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import BigModelsError, CheckpointError
from . import refused_pickle

__all__ = ["WEIGHTS", "TorchvisionWeights", "IMAGENET_MEAN", "IMAGENET_STD", "load_torchvision",
           "read_state_dict", "STATE_DICT_SUFFIXES"]

log = logging.getLogger("bigmodels.interop")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STATE_DICT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
_BASE = "https://download.pytorch.org/models/"


@dataclass(frozen=True)
class TorchvisionWeights:
    """One published torchvision checkpoint: where it lives and how its evaluation images are prepared."""

    file: str
    crop_size: int = 224  # the side the network sees
    resize_size: int = 256  # the shorter side is resized to this first, then centre-cropped
    top1: float | None = None  # ImageNet-1k top-1 accuracy torchvision reports (%)
    builder: tuple[tuple[str, Any], ...] = ()  # config fields the weights need (transform_input, ...)

    @property
    def url(self) -> str:
        return _BASE + self.file


# torchvision's DEFAULT ImageNet-1k weights per model (torchvision.models.*_Weights).
WEIGHTS: dict[str, TorchvisionWeights] = {
    "resnet18": TorchvisionWeights("resnet18-f37072fd.pth", top1=69.758),
    "resnet34": TorchvisionWeights("resnet34-b627a593.pth", top1=73.314),
    "resnet50": TorchvisionWeights("resnet50-11ad3fa6.pth", resize_size=232, top1=80.858),
    "resnet101": TorchvisionWeights("resnet101-cd907fc2.pth", resize_size=232, top1=81.886),
    "resnet152": TorchvisionWeights("resnet152-f82ba261.pth", resize_size=232, top1=82.284),
    "resnext50_32x4d": TorchvisionWeights("resnext50_32x4d-1a0047aa.pth", resize_size=232, top1=81.198),
    "wide_resnet50_2": TorchvisionWeights("wide_resnet50_2-9ba9bcbe.pth", resize_size=232, top1=81.602),
    "googlenet": TorchvisionWeights("googlenet-1378be20.pth", top1=69.778,
                                    builder=(("transform_input", True),)),
    "inception_v3": TorchvisionWeights("inception_v3_google-0cc3c7bd.pth", crop_size=299, resize_size=342,
                                       top1=77.294, builder=(("transform_input", True),)),
    "vit_b_16": TorchvisionWeights("vit_b_16-c867db91.pth", top1=81.072),
    "vit_b_32": TorchvisionWeights("vit_b_32-d86f8d99.pth", top1=75.912),
    "vit_l_16": TorchvisionWeights("vit_l_16-852ce7e3.pth", resize_size=242, top1=79.662),
}

# The classifier weight of each family: its rows give num_classes when a file was trained on other classes.
_CLASSIFIERS = ("fc.weight", "heads.head.weight")
_AUX_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")


def read_state_dict(source: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a file (safetensors, or a pickle read with ``weights_only=True``) or a URL."""
    text = str(source)
    try:
        if text.startswith(("http://", "https://")):
            state = torch.hub.load_state_dict_from_url(text, map_location="cpu", weights_only=True, progress=False)
        elif text.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(text)
        else:
            state = torch.load(text, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{text} does not exist; pass the path of a torchvision state dict") from None
    except pickle.UnpicklingError as e:
        raise refused_pickle(text, e) from None
    except Exception as e:  # truncated, foreign, unsafe (weights_only refuses arbitrary objects), offline
        raise CheckpointError(
            f"{text} could not be read as a state dict ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}); "
            "pass a torchvision .pth or a .safetensors file (only tensors load: weights_only=True)"
        ) from None
    for key in ("state_dict", "model"):  # training checkpoints often wrap the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{text} holds no state dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}  # saved from DataParallel / DDP


def _fit_config(name: str, state: dict[str, torch.Tensor], overrides: dict[str, Any]) -> dict[str, Any]:
    """Overrides that make the preset match what the file holds: class count, auxiliary heads."""
    from ..registry import get_spec

    config = get_spec(name).config
    fitted = dict(overrides)
    for key in _CLASSIFIERS:
        if key in state and "num_classes" not in fitted and state[key].shape[0] != getattr(config, "num_classes", 0):
            fitted["num_classes"] = state[key].shape[0]
    if hasattr(config, "aux_logits") and "aux_logits" not in fitted:
        fitted["aux_logits"] = any(k.startswith(_AUX_PREFIXES) for k in state)
    return fitted


def load_torchvision(name: str, source: str | Path = "DEFAULT", **overrides: Any) -> nn.Module:
    """Registered model ``name`` with the torchvision weights in ``source``, strictly loaded, in eval mode.

    ``source``: a file path (``.pth``/``.pt`` read with ``weights_only=True``, or ``.safetensors``), a URL,
    or ``"DEFAULT"`` for torchvision's published ImageNet weights (downloaded into torch's hub cache).
    The class count and auxiliary heads follow the file; ``overrides`` set other config fields. ``model.info``
    records the source (``"torchvision"``, the file or URL) and, for published weights, their preprocessing.
    """
    from ..models._contract import model_info
    from ..registry import create_model

    weights = WEIGHTS.get(name)
    if str(source) == "DEFAULT":
        if weights is None:
            raise CheckpointError(f"torchvision publishes no weights for {name!r}; known: {', '.join(WEIGHTS)}")
        source = weights.url
    state = read_state_dict(source)
    builder = dict(weights.builder) if weights else {}
    try:
        model = create_model(name, **{**builder, **_fit_config(name, state, overrides)})
    except BigModelsError as e:
        raise CheckpointError(f"{source}: cannot build {name} for these weights: {e}") from None
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    resized = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in sorted(set(own) & set(state))
               if own[k].shape != state[k].shape]
    if missing or unexpected or resized:
        raise CheckpointError(
            f"{source} does not fit {name}: missing {missing[:5]}, unexpected {unexpected[:5]}, other shapes "
            f"{resized[:3]} ({len(missing)} missing, {len(unexpected)} unexpected, {len(resized)} reshaped); "
            f"check that the file is a {name} state dict"
        )
    model.load_state_dict(state, strict=True)
    info = model_info(model)
    info.source, info.path = "torchvision", str(source)
    if weights is not None:  # ImageNet weights: evaluate as they were evaluated
        info.meta.update(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), img_size=weights.crop_size,
                         resize_size=weights.resize_size)
    log.info("loaded %s from %s (%d tensors)", name, source, len(state))
    return model.eval()
