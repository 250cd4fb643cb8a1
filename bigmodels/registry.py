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
from .errors import ConfigError, ModelNotFoundError

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
    "check_registered",
    "TASKS",  # noqa: F822 (the contract's, given by the module __getattr__ below)
]


def __getattr__(name: str) -> Any:
    # TASKS is the model contract's (models/_contract.py), re-exported here; read on first use, because importing
    # the contract imports the models package, whose families import this module to register themselves
    if name == "TASKS":
        from .models._contract import TASKS

        return TASKS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    from .models._contract import TASKS

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


def model_from_config(
    family: str,
    config: Any,
    *,
    name: str | None = None,
    task: str | None = None,
    source: str = "registry",
    path: str | None = None,
    meta: dict[str, Any] | None = None,
) -> nn.Module:
    """Build a model of ``family`` from a config instance (or a dict of its fields), with its ``model.info``.

    ``name`` defaults to the family's name and ``task`` to the task of its head (a family whose model class
    decides it, such as BERT) or of its presets; ``source``, ``path`` and ``meta`` say where it came from
    (see :class:`~bigmodels.models._contract.ModelInfo`).

    >>> from bigmodels.models.mlp import MLPConfig
    >>> model_from_config("mlp", MLPConfig(hidden=(16,))).info.task
    'image_classification'
    """
    from .models._contract import ModelInfo, set_model_info

    fam = get_family(family)
    if isinstance(config, dict):
        from .config import from_dict

        config = from_dict(fam.config_cls, config, family)
    model = fam.builder(config)
    task = task or _family_task(family, model)
    return set_model_info(model, ModelInfo(name or family, family, task, source, path, dict(meta or {})))


def _family_task(family: str, model: nn.Module) -> str:
    """The task of a model built without one: what its class decides, else the one task of its family's presets."""
    from .models._contract import TASKS

    decided = getattr(type(model), "task", None)
    if isinstance(decided, property):
        return model.task
    if isinstance(decided, str):
        return decided
    tasks = sorted({spec.task for spec in _MODELS.values() if spec.family == family})
    if len(tasks) != 1:
        raise ConfigError(
            f"the {family} family solves {', '.join(tasks) if tasks else 'no registered task'}: say which with "
            f"model_from_config({family!r}, config, task=...) (one of {', '.join(tasks or TASKS)})"
        )
    return tasks[0]


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build registered model ``name``; ``overrides`` replace fields of its config (checked). ``model.info``
    (a :class:`~bigmodels.models._contract.ModelInfo`) names the preset, its family and task::

    >>> m = create_model("mlp_small", hidden=(32,), num_classes=3)
    >>> m.config.hidden, m.info.name
    ((32,), 'mlp_small')
    """
    spec = get_spec(name)
    config = replace_strict(spec.config, overrides, owner=f"model ({name})") if overrides else spec.config
    return model_from_config(spec.family, dataclasses.replace(config), name=name, task=spec.task)


def check_registered(model: nn.Module) -> list[str]:
    """Where ``model``'s :class:`~bigmodels.models._contract.ModelInfo` disagrees with the registry: an unknown
    family, a config of another class than the family's, a preset of another family or task, a name that is
    neither a preset nor the family. Empty when it agrees (``check_contract`` checks the rest of the contract).

    >>> check_registered(create_model("mlp_small"))
    []
    """
    from .models._contract import _class_task, _unwrap, model_info

    model = _unwrap(model)
    try:
        info = model_info(model)
    except ConfigError as e:
        return [str(e)]
    try:
        family = get_family(info.family)
    except ModelNotFoundError as e:
        return [f"ModelInfo.family: {e}"]
    problems = []
    config = getattr(model, "config", None)
    if config is not None and not isinstance(config, family.config_cls):
        problems.append(f"the {info.family} family's config is a {family.config_cls.__name__}, but the model "
                        f"carries a {type(config).__name__}")
    if info.name in _MODELS:
        spec = _MODELS[info.name]
        if spec.family != info.family:
            problems.append(f"ModelInfo says preset {info.name!r} is a {info.family} model; the registry says "
                            f"{spec.family}")
        if spec.task != info.task and _class_task(model) is None:
            problems.append(f"ModelInfo.task is {info.task!r} but preset {info.name!r} solves {spec.task!r}")
    elif info.name != info.family:
        problems.append(f"ModelInfo.name {info.name!r} is neither a registered preset nor the family "
                        f"{info.family!r}")
    return problems
