"""Other libraries' checkpoint formats: Hugging Face directories here; torchvision state dicts in ``torchvision.py``.

Each supported architecture registers an :class:`HFAdapter` (in its own ``hf_<name>.py``): how its
``config.json`` maps to a bigmodels config, and how its parameter names and layouts map to ours. Then
``bigmodels.load(dir)`` reads a Hugging Face directory and ``bigmodels.save(model, dir, format="hf")``
writes one that ``transformers`` loads.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError

__all__ = ["HFAdapter", "register_hf_adapter", "is_hf_directory", "load_hf", "save_hf", "read_hf_state_dict",
           "hf_num_labels", "preset_name"]


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


def hf_num_labels(hf: dict[str, Any]) -> int:
    """The class count of a transformers config: its id2label, else num_labels (transformers' default 2)."""
    id2label = hf.get("id2label")
    return len(id2label) if isinstance(id2label, dict) and id2label else int(hf.get("num_labels", 2))


def preset_name(family: str, config: Any, dims: tuple[str, ...]) -> str:
    """The registered preset of ``family`` whose ``dims`` fields equal ``config``'s (e.g. "vit_b_16"), else
    the family's name: what a loaded Hugging Face model reports as its model name."""
    from ..registry import get_spec, list_models

    ours = tuple(getattr(config, k) for k in dims)
    for name in list_models():
        spec = get_spec(name)
        if spec.family == family and tuple(getattr(spec.config, k) for k in dims) == ours:
            return name
    return family


_ADAPTERS: dict[str, HFAdapter] = {}


def register_hf_adapter(adapter: HFAdapter) -> None:
    _ADAPTERS[adapter.model_type] = adapter


def _adapter_for(model_type: str | None, where: Path) -> HFAdapter:
    from .. import models  # noqa: F401  (families register their adapters on import)

    if model_type not in _ADAPTERS:
        raise CheckpointError(
            f"{where}: Hugging Face model_type {model_type!r} is not supported; bigmodels reads "
            f"{', '.join(sorted(_ADAPTERS)) or 'none yet'}"
        )
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
    except Exception as e:  # truncated or foreign files
        raise CheckpointError(f"{directory}: the weights are unreadable ({type(e).__name__}: {e})") from None
    raise CheckpointError(f"{directory} has a config.json but no model.safetensors or pytorch_model.bin")


def load_hf(directory: str | Path) -> nn.Module:
    """Build the bigmodels model for a Hugging Face directory and load its weights strictly."""
    from ..registry import model_from_config

    directory = Path(directory)
    hf_config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    adapter = _adapter_for(hf_config.get("model_type"), directory)
    name, task, config = adapter.config_from_hf(hf_config, directory)
    model = model_from_config(adapter.family, config)
    state = adapter.state_from_hf(read_hf_state_dict(directory), config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{directory}: the weights do not match a {hf_config.get('model_type')} model of this config: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    model.model_name, model.meta = name, {"source": "huggingface", "path": str(directory)}
    if not hasattr(type(model), "task"):
        model.task = task
    return model.eval()


def save_hf(model: nn.Module, directory: str | Path) -> Path:
    """Write ``model`` as a Hugging Face directory (config.json + model.safetensors)."""
    from safetensors.torch import save_file

    from .._files import atomic_write

    family = getattr(model, "family", None)
    adapter = next((a for a in _ADAPTERS.values() if a.family == family), None)
    if adapter is None:
        raise CheckpointError(
            f"no Hugging Face format is known for the {family!r} family; save it with format='bigmodels'"
        )
    config = adapter.config_to_hf(model)  # first: an adapter that refuses the model leaves no files behind
    state = {k: v.detach().contiguous().cpu() for k, v in adapter.state_to_hf(model.state_dict(), model).items()}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / "model.safetensors", lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    atomic_write(directory / "config.json", lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))
    return directory
