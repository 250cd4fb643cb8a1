"""Other libraries' checkpoint formats: Hugging Face directories here; torchvision state dicts in ``torchvision.py``.

Each supported architecture has an :class:`HFAdapter` (``ADAPTER`` in its own ``hf_<name>.py``): how its
``config.json`` maps to a bigmodels config, and how its parameter names and layouts map to ours. Then
``bigmodels.load(dir)`` reads a Hugging Face directory and ``bigmodels.save(model, dir, format="hf")``
writes one that ``transformers`` loads.

Adapters are found through a table (``model_type`` -> module) and imported only when their format is met, so
the model families never import this package (imports point down: interop -> models, never back).
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._files import atomic_write
from ..errors import CheckpointError
from ..registry import get_spec, list_models, model_from_config

__all__ = ["HFAdapter", "register_hf_adapter", "get_hf_adapter", "supported_model_types", "ADAPTER_MODULES",
           "FAMILY_FORMATS", "is_hf_directory", "load_hf", "save_hf", "read_hf_state_dict", "hf_num_labels",
           "preset_name", "refused_pickle", "PREPROCESSOR_FILE", "write_tokenizer", "source_tokenizer",
           "STATE_DICT_LOADERS", "state_dict_loader"]


@dataclass(frozen=True)
class HFAdapter:
    """How one Hugging Face architecture maps onto a bigmodels family."""

    model_type: str  # config.json "model_type", e.g. "gpt2", "bert"
    family: str  # the bigmodels family it loads into
    # (HF config dict, the directory) -> (registry name to report, task, bigmodels config instance); the
    # directory lets an adapter read files beside config.json (e.g. a sentence-transformers pooling config)
    config_from_hf: Callable[[dict[str, Any], Path], tuple[str, str, Any]]
    # bigmodels model -> HF config dict (model_type and architectures included)
    config_to_hf: Callable[[nn.Module], dict[str, Any]]
    # HF state dict -> bigmodels state dict (renames, transposes, dropped buffers), given our config
    state_from_hf: Callable[[dict[str, torch.Tensor], Any], dict[str, torch.Tensor]]
    # bigmodels state dict -> HF state dict
    state_to_hf: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]
    # bigmodels model -> further files of its Hugging Face directory (relative path -> text), e.g. the modules.json
    # and pooling config that make an embedding model a sentence-transformers one; a path ending in "/" is a folder
    extra_files: Callable[[nn.Module], dict[str, str]] | None = None


def hf_num_labels(hf: dict[str, Any]) -> int:
    """The class count of a transformers config: its id2label, else num_labels (transformers' default 2)."""
    id2label = hf.get("id2label")
    return len(id2label) if isinstance(id2label, dict) and id2label else int(hf.get("num_labels", 2))


def preset_name(family: str, config: Any, dims: tuple[str, ...]) -> str:
    """The registered preset of ``family`` whose ``dims`` fields equal ``config``'s (e.g. "vit_b_16"), else
    the family's name: what a loaded Hugging Face model reports as its model name."""
    ours = tuple(getattr(config, k) for k in dims)
    for name in list_models():
        spec = get_spec(name)
        if spec.family == family and tuple(getattr(spec.config, k) for k in dims) == ours:
            return name
    return family


# config.json "model_type" -> the module of this package that holds its ADAPTER (imported on first use)
ADAPTER_MODULES: dict[str, str] = {"gpt2": "hf_gpt2", "bert": "hf_bert", "vit": "hf_vit", "marian": "hf_marian"}
# bigmodels family -> the model_type that save_hf writes for it
FAMILY_FORMATS: dict[str, str] = {"gpt": "gpt2", "bert": "bert", "vit": "vit", "transformer": "marian"}

# plain state dicts (a file or URL and the registry name of its architecture): registry-name glob -> the
# "module:function" of this package that loads one as function(name, source), imported on first use; the first
# matching glob wins, and "*" (torchvision's names) takes every name the others do not
STATE_DICT_LOADERS: dict[str, str] = {"efficientnet_lite*": "efficientnet_lite:load_efficientnet_lite",
                                      "*": "torchvision:load_torchvision"}


def state_dict_loader(name: str) -> Callable[..., nn.Module]:
    """The function that loads a plain state dict into registered architecture ``name`` (STATE_DICT_LOADERS)."""
    target = next(t for pattern, t in STATE_DICT_LOADERS.items() if fnmatch.fnmatch(name, pattern))
    module, function = target.split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), function)


_ADAPTERS: dict[str, HFAdapter] = {}  # model_type -> adapter, filled on first use or by register_hf_adapter


def register_hf_adapter(adapter: HFAdapter) -> None:
    """Add (or replace) the adapter of ``adapter.model_type``, e.g. for an architecture defined outside bigmodels;
    ``save_hf`` then writes that format for ``adapter.family``."""
    _ADAPTERS[adapter.model_type] = adapter
    FAMILY_FORMATS[adapter.family] = adapter.model_type


def supported_model_types() -> list[str]:
    """The Hugging Face ``model_type`` values bigmodels reads, without importing their adapters."""
    return sorted(set(ADAPTER_MODULES) | set(_ADAPTERS))


def get_hf_adapter(model_type: str | None, where: Path | str = "this directory") -> HFAdapter:
    """The adapter of ``model_type``, importing its module the first time; a clear error for an unknown one."""
    if model_type not in _ADAPTERS:
        if model_type not in ADAPTER_MODULES:
            raise CheckpointError(
                f"{where}: Hugging Face model_type {model_type!r} is not supported; bigmodels reads "
                f"{', '.join(supported_model_types())}"
            )
        module = importlib.import_module(f"{__name__}.{ADAPTER_MODULES[model_type]}")
        _ADAPTERS[model_type] = module.ADAPTER
    return _ADAPTERS[model_type]


def is_hf_directory(directory: Path) -> bool:
    """A directory with a Hugging Face ``config.json`` (one that has a ``model_type``)."""
    cfg = directory / "config.json"
    if not cfg.is_file():
        return False
    try:
        record = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(record, dict) and "model_type" in record and record.get("format") != "bigmodels"


def refused_pickle(path: str | Path, error: Exception) -> CheckpointError:
    """The error for a pickle that ``torch.load(weights_only=True)`` refused (or could not parse).

    torch's own text goes on to suggest ``weights_only=False``; only what it found in the file is kept."""
    if "Weights only load failed" not in str(error):
        first = str(error).splitlines()[0][:200] if str(error) else ""
        return CheckpointError(f"{path} could not be read as a state dict ({type(error).__name__}: {first}); pass "
                               "a PyTorch .pth/.bin file of tensors or a .safetensors file")
    found = next((line.strip().rstrip(".") for line in str(error).splitlines() if "GLOBAL" in line
                  or "Unsupported" in line), "objects other than tensors")
    return CheckpointError(
        f"{path} was refused: it is a pickle that holds more than tensors ({found}), and a pickle is not a safe "
        "format (loading it can run any code), so it was read with weights_only=True, which loads tensors only. "
        "Convert it to safetensors from a trusted source (the model's publisher, or where you trust the file: "
        "safetensors.torch.save_file of its state dict) and pass the .safetensors file"
    )


def read_hf_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """model.safetensors (or sharded safetensors), else pytorch_model.bin read with weights_only=True."""
    from safetensors.torch import load_file

    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    try:
        if single.is_file():
            return load_file(str(single))
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return {k: v for shard in shards for k, v in load_file(str(directory / shard)).items()}
        legacy = directory / "pytorch_model.bin"
        if legacy.is_file():
            return torch.load(legacy, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise refused_pickle(directory / "pytorch_model.bin", e) from None
    except Exception as e:  # truncated or foreign files
        raise CheckpointError(f"{directory}: the weights are unreadable ({type(e).__name__}: {e})") from None
    raise CheckpointError(f"{directory} has a config.json but no model.safetensors or pytorch_model.bin")


def load_hf(directory: str | Path) -> nn.Module:
    """Build the bigmodels model for a Hugging Face directory and load its weights strictly."""
    directory = Path(directory)
    hf_config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    adapter = get_hf_adapter(hf_config.get("model_type"), directory)
    name, task, config = adapter.config_from_hf(hf_config, directory)
    model = model_from_config(adapter.family, config, name=name, task=task, source="huggingface",
                              path=str(directory))
    state = adapter.state_from_hf(read_hf_state_dict(directory), config)
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    reshaped = [f"{k} {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model"
                for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or unexpected or reshaped:
        found = [f"{label} {keys[:5]}" + (f" ({len(keys)} in all)" if len(keys) > 5 else "")
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("other shapes", reshaped))
                 if keys]
        raise CheckpointError(
            f"{directory}: the weights do not match a {hf_config.get('model_type')} model of its config.json: "
            f"{'; '.join(found)}; the weights belong to another model (or config.json was edited)"
        )
    model.load_state_dict(state, strict=True)
    _read_preprocessing(directory, model)
    return model.eval()


def save_hf(model: nn.Module, directory: str | Path) -> Path:
    """Write ``model`` as a Hugging Face directory: config.json + model.safetensors, the adapter's further files
    (a sentence-transformers embedding model's modules.json, pooling and Normalize) and, for a vision model, the
    preprocessor_config.json of its image preprocessing. ``bigmodels.save(..., format="hf")`` adds the tokenizer."""
    from safetensors.torch import save_file

    info = getattr(model, "info", None)  # the contract's ModelInfo (a module built by hand has none)
    family = getattr(info, "family", None)
    if family not in FAMILY_FORMATS:
        raise CheckpointError(
            f"no Hugging Face format is known for the {family!r} family; save it with format='bigmodels' "
            f"(Hugging Face formats exist for {', '.join(sorted(FAMILY_FORMATS))})"
        )
    adapter = get_hf_adapter(FAMILY_FORMATS[family])
    config = adapter.config_to_hf(model)  # first: an adapter that refuses the model leaves no files behind
    extra = dict(adapter.extra_files(model)) if adapter.extra_files is not None else {}
    state = {k: v.detach().contiguous().cpu() for k, v in adapter.state_to_hf(model.state_dict(), model).items()}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / "model.safetensors", lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    atomic_write(directory / "config.json", lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))
    preprocessing = _preprocessor_config(model)
    if preprocessing is not None:
        extra[PREPROCESSOR_FILE] = json.dumps(preprocessing, indent=2) + "\n"
    for rel, text in extra.items():
        if rel.endswith("/"):  # a folder that holds nothing (sentence-transformers' Normalize)
            (directory / rel).mkdir(parents=True, exist_ok=True)
            continue
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(directory / rel, lambda p, text=text: p.write_text(text, encoding="utf-8"))
    return directory


# ---------------------------------------------------------------------------------------------- tokenizers


def write_tokenizer(tokenizer: Any, directory: Path) -> None:
    """Write ``tokenizer`` into a model directory: tokenizer.json and, for a bigmodels Tokenizer, the
    tokenizer_config.json of its special-token roles and length limit (which transformers' AutoTokenizer and
    ``bigmodels.load_tokenizer`` read), each file replaced atomically."""
    atomic_write(directory / "tokenizer.json", lambda p: tokenizer.save(str(p)))  # tokenizers wants a str
    roles = getattr(tokenizer, "special_tokens", None)
    if not isinstance(roles, dict):
        return  # a plain tokenizers.Tokenizer: its tokenizer.json is all there is
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast"}
    config |= {f"{role}_token": token for role, token in roles.items()}
    if getattr(tokenizer, "model_max_length", None):
        config["model_max_length"] = tokenizer.model_max_length
    atomic_write(directory / "tokenizer_config.json", lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))


def source_tokenizer(model: nn.Module) -> Any:
    """The tokenizer saved beside the directory ``model`` was read from (its ``info.path``), else None: what
    a save of that model writes when no tokenizer is given, so that a model keeps its tokenizer."""
    path = getattr(getattr(model, "info", None), "path", None)
    directory = Path(path) if path else None
    if directory is None or not directory.is_dir() or not (
            (directory / "tokenizer.json").is_file() or (directory / "vocab.txt").is_file()):
        return None
    from ..data.tokenizers import load_tokenizer

    return load_tokenizer(directory)


# ---------------------------------------------------------------------------------------------- image preprocessing
# How a vision model's images are prepared travels with it: ``info.meta`` holds mean, std, img_size (the side the
# network sees) and resize_size (the shorter side before a centre crop; absent: resize straight to img_size), and a
# Hugging Face directory holds the same in preprocessor_config.json, which transformers' AutoImageProcessor reads.

PREPROCESSOR_FILE = "preprocessor_config.json"
_BILINEAR = 2  # PIL.Image.Resampling.BILINEAR, as torchvision's evaluation transforms resize


def _preprocessor_config(model: nn.Module) -> dict[str, Any] | None:
    """The preprocessor_config.json of a vision model (None for other models): a resize of the shorter side
    then a centre crop (CLIPImageProcessor) when ``meta["resize_size"]`` says so, else a plain resize
    (ViTImageProcessor); mean and std from the meta, else 0.5 (what bigmodels' pipelines assume)."""
    info = getattr(model, "info", None)
    if getattr(info, "task", None) != "image_classification":
        return None
    meta, config = info.meta, model.config
    channels = getattr(config, "in_chans", 3)
    side = meta.get("img_size") or getattr(config, "img_size", None) or 224
    height, width = (side, side) if isinstance(side, int) else side
    record: dict[str, Any] = {
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": list(meta.get("mean") or [0.5] * channels),
        "image_std": list(meta.get("std") or [0.5] * channels),
        "do_resize": True, "resample": _BILINEAR,
    }
    if meta.get("resize_size"):
        return {"image_processor_type": "CLIPImageProcessor", **record, "do_convert_rgb": channels == 3,
                "size": {"shortest_edge": int(meta["resize_size"])}, "do_center_crop": True,
                "crop_size": {"height": int(height), "width": int(width)}}
    return {"image_processor_type": "ViTImageProcessor", **record, "size": {"height": int(height), "width": int(width)}}


def _hf_side(value: Any) -> int | list[int] | None:
    """A Hugging Face size ({"height", "width"}, {"shortest_edge"} or an int) as meta's img_size."""
    if isinstance(value, dict):
        if isinstance(value.get("height"), int) and isinstance(value.get("width"), int):
            return value["height"] if value["height"] == value["width"] else [value["height"], value["width"]]
        value = value.get("shortest_edge")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _read_preprocessing(directory: Path, model: nn.Module) -> None:
    """Copy a Hugging Face preprocessor_config.json into ``model.info.meta`` (mean, std, img_size, resize_size)."""
    try:
        record = json.loads((directory / PREPROCESSOR_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return  # none (or unreadable): the pipelines' defaults apply
    if not isinstance(record, dict):
        return
    found: dict[str, Any] = {}
    for key, ours in (("image_mean", "mean"), ("image_std", "std")):
        if isinstance(record.get(key), list) and all(isinstance(v, int | float) for v in record[key]):
            found[ours] = [float(v) for v in record[key]]
    if record.get("do_center_crop") and _hf_side(record.get("crop_size")) is not None:
        found["img_size"] = _hf_side(record["crop_size"])
        resize = record.get("size")
        resize = resize.get("shortest_edge") if isinstance(resize, dict) else resize
        if isinstance(resize, int) and resize > 0:
            found["resize_size"] = resize
    elif _hf_side(record.get("size")) is not None:
        found["img_size"] = _hf_side(record["size"])
    model.info.meta.update(found)
