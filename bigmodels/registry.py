"""The model registry: families (a config class + a model class) and named presets (variants as data).

Each family file registers itself once and then lists its presets as a few lines of config::

    register_family("cnn", CNNConfig, CNN)
    register_model("cnn_keras", family="cnn", task="image_classification", config=CNNConfig(...))

Users build models by name, with checked overrides::

    >>> import bigmodels
    >>> model = bigmodels.create_model("cnn_keras", num_classes=5)
    >>> bigmodels.list_models("lstm*")[:2]
    ['lstm_classifier', 'lstm_keras']
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from .config import replace_strict
from .errors import ModelNotFoundError

__all__ = [
    "ModelSpec",
    "Family",
    "register_family",
    "register_model",
    "create_model",
    "list_models",
    "get_spec",
    "get_family",
    "model_from_config",
    "TASKS",
]

TASKS = (
    "image_classification",
    "sequence_classification",  # a label per text (or text pair)
    "token_classification",  # a label per token (NER)
    "question_answering",  # extractive: start/end of the answer span
    "language_modeling",  # next token (causal)
    "masked_language_modeling",  # BERT pretraining: masked tokens (+ next-sentence prediction)
    "sentence_embedding",  # a vector per text
    "translation",  # sequence to sequence (source ids -> target ids)
)


@dataclass(frozen=True)
class Family:
    name: str
    config_cls: type
    builder: Callable[[Any], nn.Module]


@dataclass(frozen=True)
class ModelSpec:
    """A registered preset: a family, the task it solves and its config."""

    name: str
    family: str
    task: str
    config: Any
    description: str = ""
    compare: bool = True  # included in `bigmodels compare` when the task fits the data


_FAMILIES: dict[str, Family] = {}
_MODELS: dict[str, ModelSpec] = {}


def register_family(name: str, config_cls: type, builder: Callable[[Any], nn.Module]) -> None:
    """Register a family: ``builder(config)`` returns the model."""
    if name in _FAMILIES and _FAMILIES[name].builder is not builder:
        raise ValueError(f"family {name!r} is already registered")
    _FAMILIES[name] = Family(name, config_cls, builder)


def register_model(
    name: str, *, family: str, task: str, config: Any, description: str = "", compare: bool = True
) -> None:
    """Register preset ``name`` of ``family`` (which must be registered first)."""
    if family not in _FAMILIES:
        raise ValueError(f"register family {family!r} before its preset {name!r}")
    if task not in TASKS:
        raise ValueError(f"preset {name!r}: task {task!r} is not one of {TASKS}")
    if not isinstance(config, _FAMILIES[family].config_cls):
        raise TypeError(f"preset {name!r}: config must be a {_FAMILIES[family].config_cls.__name__}")
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = ModelSpec(name, family, task, config, description, compare)


def _ensure_loaded() -> None:
    # Importing the models package registers every family; done lazily so `registry` stays import-light.
    from . import models  # noqa: F401


def get_spec(name: str) -> ModelSpec:
    """The preset ``name``; unknown names raise with the closest matches."""
    _ensure_loaded()
    if name not in _MODELS:
        near = difflib.get_close_matches(name, list(_MODELS), n=3)
        hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
        raise ModelNotFoundError(
            f"unknown model {name!r}.{hint} Run `bigmodels models` to list the {len(_MODELS)} registered models."
        )
    return _MODELS[name]


def get_family(name: str) -> Family:
    _ensure_loaded()
    if name not in _FAMILIES:
        raise ModelNotFoundError(f"unknown model family {name!r}; known families: {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[name]


def list_models(pattern: str | None = None, *, task: str | None = None) -> list[str]:
    """Registered model names, sorted; ``pattern`` is a shell glob (``"resnet*"``)."""
    _ensure_loaded()
    names = sorted(_MODELS)
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    if task:
        names = [n for n in names if _MODELS[n].task == task]
    return names


def model_from_config(family: str, config: Any) -> nn.Module:
    """Build a model of ``family`` from a config instance (or a dict of its fields)."""
    fam = get_family(family)
    if isinstance(config, dict):
        from .config import from_dict

        config = from_dict(fam.config_cls, config, family)
    model = fam.builder(config)
    model.family = family  # type: ignore[attr-defined]
    return model


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build registered model ``name``; ``overrides`` replace fields of its config (checked)::

    >>> m = create_model("mlp_small", hidden=(32,), num_classes=3)
    >>> m.config.hidden
    (32,)
    """
    spec = get_spec(name)
    config = replace_strict(spec.config, overrides, owner=f"model ({name})") if overrides else spec.config
    model = model_from_config(spec.family, dataclasses.replace(config))
    model.model_name = name  # type: ignore[attr-defined]
    if not hasattr(type(model), "task"):  # a family whose head decides its task defines `task` itself
        model.task = spec.task  # type: ignore[attr-defined]
    from .models._contract import ModelInfo, set_model_info

    return set_model_info(model, ModelInfo(name=name, family=spec.family, task=spec.task))
