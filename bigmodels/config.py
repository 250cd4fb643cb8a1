"""Typed configs: dataclasses that validate themselves, YAML recipes and strict dotted overrides.

A run is described by one :class:`RunConfig`. It can come from a YAML recipe, from dotted overrides
(``optim.lr=3e-4``) or both; every key is checked against the dataclass fields, and a typo fails with the
list of valid keys::

    >>> cfg = resolve_run_config(None, ["model=cnn_small", "optim.lr=3e-4", "train.epochs=2"])
    >>> cfg.optim.lr
    0.0003

``model.<key>=value`` overrides go to ``RunConfig.model_args``; they are checked against the chosen
model's own config when the model is built (see :func:`bigmodels.registry.create_model`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

__all__ = [
    "DataConfig",
    "OptimConfig",
    "SchedConfig",
    "TrainConfig",
    "DistillConfig",
    "LoraConfig",
    "RunConfig",
    "from_dict",
    "to_dict",
    "replace_strict",
    "parse_value",
    "apply_overrides",
    "load_yaml",
    "resolve_run_config",
]


def check_choice(owner: str, key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{owner}.{key}={value!r} is not valid; choose one of {', '.join(map(str, choices))}")


def check_positive(owner: str, key: str, value: float | None, *, allow_zero: bool = False) -> None:
    if value is None:
        return
    if not math.isfinite(value):
        raise ConfigError(f"{owner}.{key}={value!r} must be a finite number")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{owner}.{key}={value!r} must be {bound}")


@dataclass
class DataConfig:
    """Which data to train on and how to batch and augment it."""

    # digits | mnist | cifar10 | cifar100 | imagefolder | pydoc | text | sst2 | conll2003 | mlm | translation | numbers
    name: str = "digits"
    path: str | None = None  # folder or file for mnist / cifar10 / cifar100 (dir or .tar.gz) / imagefolder / text
    batch_size: int = 64  # global batch (summed over data-parallel processes)
    eval_batch_size: int | None = None  # defaults to 2 x batch_size
    val_fraction: float = 0.1
    block_size: int = 128  # language modelling: tokens per training window
    max_length: int = 128  # text for pretrained models (sst2, conll2003) and translation: truncate to this many tokens
    src_lang: str | None = None  # translation: the source language, the suffix of {split}.{lang}[.gz] (e.g. en)
    tgt_lang: str | None = None  # translation: the target language (e.g. de)
    group_by_length: bool = False  # text: batch samples of similar length together (less padding)
    tokenizer: str | None = None  # text: a tokenizer file/directory, or bpe:N to train one (default: init's)
    img_size: int | None = None  # resize images (image folders of mixed sizes need it)
    crop_padding: int = 0  # random-crop augmentation: pad by this many pixels, crop back
    hflip: bool = False  # random horizontal flips (not for digits!)
    # Inception-style random-resized-crop (train only): a crop of rrc_scale x the image area and aspect ratio
    # in [3/4, 4/3], resized to img_size (or the data's size); excludes crop_padding. Eval sees whole images.
    random_resized_crop: bool = False
    rrc_scale: tuple[float, float] = (0.08, 1.0)  # random_resized_crop: (min, max) fraction of the image area
    num_workers: int = 0  # data-loader processes (0: load in the training process)
    seed: int = 0  # split and shuffle seed

    def __post_init__(self) -> None:
        check_positive("data", "batch_size", self.batch_size)
        check_positive("data", "eval_batch_size", self.eval_batch_size)
        check_positive("data", "block_size", self.block_size)
        check_positive("data", "crop_padding", self.crop_padding, allow_zero=True)
        check_positive("data", "num_workers", self.num_workers, allow_zero=True)
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction={self.val_fraction!r} must be in [0, 1), e.g. 0.1 "
                              "(0: no validation split, where the data has none of its own)")
        low, high = self.rrc_scale
        if not 0.0 < low <= high <= 1.0:
            raise ConfigError(
                f"data.rrc_scale={list(self.rrc_scale)!r} must be [min, max] area fractions with "
                "0 < min <= max <= 1, e.g. [0.08, 1.0]"
            )
        if self.random_resized_crop and self.crop_padding:
            raise ConfigError(
                f"data.random_resized_crop=true and data.crop_padding={self.crop_padding} are two crop "
                "augmentations; choose one (data.crop_padding=0 or data.random_resized_crop=false)"
            )


@dataclass
class OptimConfig:
    """Optimizer. Weight decay skips biases, norms and embeddings when ``decay_all`` is false."""

    name: str = "adamw"  # sgd | adam | adamw
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    decay_all: bool = False  # apply weight decay to 1-D params (biases, norms) too

    def __post_init__(self) -> None:
        check_choice("optim", "name", self.name, ("sgd", "adam", "adamw"))
        check_positive("optim", "lr", self.lr)
        check_positive("optim", "weight_decay", self.weight_decay, allow_zero=True)
        check_positive("optim", "eps", self.eps)
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optim.betas={list(self.betas)!r} must be two decay rates in [0, 1), e.g. [0.9, 0.999]")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"optim.momentum={self.momentum!r} must be in [0, 1), e.g. 0.9")
        if self.nesterov and (self.name != "sgd" or self.momentum <= 0):
            raise ConfigError("optim.nesterov=true needs optim.name=sgd and optim.momentum > 0")


@dataclass
class SchedConfig:
    """Learning-rate schedule: linear warmup, then ``name``."""

    name: str = "cosine"  # constant | cosine | linear | step | inverse_sqrt
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine/linear floor, as a fraction of optim.lr
    step_size: int = 1000  # step: decay every step_size optimizer steps
    gamma: float = 0.1  # step: multiply by gamma

    def __post_init__(self) -> None:
        check_choice("sched", "name", self.name, ("constant", "cosine", "linear", "step", "inverse_sqrt"))
        check_positive("sched", "warmup_steps", self.warmup_steps, allow_zero=True)
        check_positive("sched", "step_size", self.step_size)
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"sched.min_lr_ratio={self.min_lr_ratio!r} must be in [0, 1]")


@dataclass
class TrainConfig:
    """The training loop: length, precision, evaluation, checkpoints, early stopping."""

    epochs: int | None = 1  # stop after this many epochs (None: use steps)
    steps: int | None = None  # stop after this many optimizer steps (wins over epochs when set)
    max_time: float | None = None  # stop after this many seconds of training in this invocation (a resume restarts it)
    grad_accum: int = 1  # micro-batches per optimizer step
    clip_grad_norm: float = 0.0  # 0 disables clipping
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16 uses a gradient scaler; CUDA only)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    eval_every: int = 0  # optimizer steps between evaluations; 0: at the end of each epoch
    save_every: int = 0  # optimizer steps between checkpoints; 0: at each evaluation
    keep_last: int = 2  # step checkpoints kept besides the best
    monitor: str = "val_loss"  # metric for best checkpoint and early stopping
    patience: int = 0  # evaluations without improvement before stopping; 0 disables
    log_every: int = 10  # optimizer steps between log lines / JSONL records
    out_dir: str = "runs/default"
    resume: bool = True  # resume from out_dir's latest checkpoint when there is one
    progress: bool = True  # progress bar on a terminal
    # Regularisation for classification (all off by default). Evaluation always uses the hard labels and
    # plain cross-entropy, so val metrics stay comparable across settings.
    # in [0, 1): targets (1 - eps) one-hot + eps / classes (Szegedy et al. 2016); classification and translation
    label_smoothing: float = 0.0
    mixup: float = 0.0  # image classification: mixup alpha (Zhang et al. 2018), lam ~ Beta(alpha, alpha); 0: off
    cutmix: float = 0.0  # image classification: CutMix alpha (Yun et al. 2019); 0: off
    mix_prob: float = 1.0  # with mixup or cutmix on: the chance that a batch is mixed at all
    mix_switch_prob: float = 0.5  # with both on: the chance a mixed batch uses CutMix rather than mixup (timm's)
    channels_last: bool = False  # image models: NHWC weights and 4-D inputs (faster convolutions on GPUs)
    # torch.compile the training step's forward + loss: default | reduce-overhead | max-autotune |
    # max-autotune-no-cudagraphs (see bigmodels.compress.fuse.COMPILE_MODES); None: eager
    compile: str | None = None

    def __post_init__(self) -> None:
        check_choice("train", "precision", self.precision, ("fp32", "bf16", "fp16"))
        if self.compile is not None:
            check_choice("train", "compile", self.compile,
                         ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"))
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"train.label_smoothing={self.label_smoothing!r} must be in [0, 1), e.g. 0.1")
        for key in ("mixup", "cutmix"):
            check_positive("train", key, getattr(self, key), allow_zero=True)
        for key in ("mix_prob", "mix_switch_prob"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"train.{key}={getattr(self, key)!r} must be a probability in [0, 1]")
        for key in ("epochs", "steps", "max_time", "grad_accum", "log_every", "keep_last"):
            check_positive("train", key, getattr(self, key))
        for key in ("clip_grad_norm", "eval_every", "save_every", "patience"):
            check_positive("train", key, getattr(self, key), allow_zero=True)
        if self.epochs is None and self.steps is None and self.max_time is None:
            raise ConfigError("train: set at least one of train.epochs, train.steps or train.max_time")
        if not (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")):
            raise ConfigError(f"train.device={self.device!r} is not valid; use auto, cpu, cuda or cuda:N")


@dataclass
class DistillConfig:
    """Knowledge distillation (``bigmodels.compress.distill``): off until ``teacher`` names a saved model.

    The loss is ``(1 - alpha) * hard + alpha * T^2 * KL(teacher || student at temperature T)`` (Hinton et al.
    2015), plus ``hidden_weight`` x hidden-state MSE and ``attention_weight`` x attention-map KL (TinyBERT,
    MiniLM) between uniformly mapped layers, and ``embedding_weight`` x the MSE between the embedding layers'
    outputs (TinyBERT's L_embd).
    """

    teacher: str | None = None  # a saved model directory or training run (runs/NAME): the frozen teacher
    temperature: float = 2.0  # T: softens both distributions; the soft term is scaled by T^2
    alpha: float = 0.5  # weight of the soft-target term; 1 - alpha weighs the hard-label loss
    hidden_weight: float = 0.0  # hidden-state transfer (MSE through a learned projection when widths differ)
    attention_weight: float = 0.0  # attention-map transfer (KL between attention distributions)
    embedding_weight: float = 0.0  # embedding-layer transfer: MSE between what enters the first blocks (TinyBERT)
    augment: int = 0  # text: augmented copies of each batch, learnt from the teacher's soft targets alone
    mask_prob: float = 0.1  # augmentation: each token of a copy becomes the mask token with this probability
    ngram_prob: float = 0.25  # augmentation: a copy's sentence becomes one of its n-grams (n = 1..5) instead

    def __post_init__(self) -> None:
        check_positive("distill", "temperature", self.temperature)
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"distill.alpha={self.alpha!r} must be in [0, 1], e.g. 0.5")
        for key in ("hidden_weight", "attention_weight", "embedding_weight"):
            check_positive("distill", key, getattr(self, key), allow_zero=True)
        if isinstance(self.augment, bool) or not isinstance(self.augment, int) or self.augment < 0:
            raise ConfigError(f"distill.augment={self.augment!r} must be a whole number >= 0: the augmented copies "
                              "of each batch, e.g. 1 (0: none)")
        for key in ("mask_prob", "ngram_prob"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"distill.{key}={getattr(self, key)!r} must be a probability in [0, 1]")


@dataclass
class LoraConfig:
    """Low-rank adapters (``bigmodels.compress.lora``, Hu et al. 2021): off while ``rank`` is 0."""

    rank: int = 0  # r of each adapter B (out, r) @ A (r, in); 0: no LoRA
    alpha: float = 16.0  # the adapter's output is scaled by alpha / rank
    dropout: float = 0.0  # dropout on the adapter's input
    targets: list[str] = field(default_factory=lambda: ["*"])  # Linear layers to adapt: name patterns (fnmatch)
    train_modules: list[str] = field(default_factory=list)  # modules trained in full, e.g. [classifier]

    def __post_init__(self) -> None:
        check_positive("lora", "rank", self.rank, allow_zero=True)
        check_positive("lora", "alpha", self.alpha)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout={self.dropout!r} must be in [0, 1): it is a dropout probability, e.g. 0.1")
        if self.rank and not self.targets:
            raise ConfigError("lora.targets=[] adapts no layer; name Linear layers by pattern, e.g. lora.targets=[*]")


@dataclass
class RunConfig:
    """Everything a training run needs; saved with every checkpoint."""

    model: str = "cnn_small"
    model_args: dict[str, Any] = field(default_factory=dict)
    init: str | None = None  # start from these weights: a bigmodels or Hugging Face model directory
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)


# ----------------------------------------------------------------------------------------------------
# Generic machinery: dict <-> dataclass with type checks, dotted overrides.


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown_key(owner: str, key: str, valid: list[str]) -> ConfigError:
    near = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean {near[0]!r}?" if near else ""
    where = f"{owner}." if owner else ""
    return ConfigError(f"unknown config key {where}{key!r}.{hint} Valid keys: {', '.join(valid)}")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp`` and convert where it is lossless."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping of keys, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}={value!r} must be a list, e.g. [1, 2]")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}={value!r} must have {len(args)} items")
            items = [_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))]
        else:
            item_tp = args[0] if args else Any
            items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}={value!r} must be true or false")
    if tp is int:
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}={value!r} must be a whole number")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{where}={value!r} must be a whole number")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}={value!r} must be a number")
        if not math.isfinite(value):
            raise ConfigError(f"{where}={value!r} must be a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}={value!r} must be a string")
        return value
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where}={value!r} must be null")
        return None
    return value


# Config keys that are dropout probabilities, in every family's naming (dropout, attention_dropout, drop_rate,
# hidden_dropout_prob, classifier_dropout, ...): one rule where the value enters, so no family can forget it.
_PROBABILITY_KEY = re.compile(r"(^|_)(dropout|drop_rate)(_prob)?$")


def _check_probabilities(values: dict[str, Any], owner: str) -> None:
    for key, value in values.items():
        if _PROBABILITY_KEY.search(key) and isinstance(value, float | int) and not 0.0 <= value < 1.0:
            where = f"{owner}.{key}" if owner else key
            raise ConfigError(f"{where}={value!r} must be in [0, 1): it is a dropout probability, e.g. 0.1")


def from_dict(cls: type, data: dict[str, Any], owner: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    types_ = _field_types(cls)
    for key in data:
        if key not in types_:
            raise _unknown_key(owner, key, list(types_))
    kwargs = {k: _coerce(v, types_[k], f"{owner}.{k}" if owner else k) for k, v in data.items()}
    _check_probabilities(kwargs, owner)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON/YAML-safe dict (tuples become lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))


def replace_strict(cfg: Any, overrides: dict[str, Any], owner: str = "") -> Any:
    """``dataclasses.replace`` with key and type checks (the result re-runs ``__post_init__``)."""
    merged = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    types_ = _field_types(type(cfg))
    for key, value in overrides.items():
        if key not in types_:
            raise _unknown_key(owner, key, list(types_))
        merged[key] = _coerce(value, types_[key], f"{owner}.{key}" if owner else key)
    _check_probabilities({k: merged[k] for k in overrides}, owner)
    return type(cfg)(**merged)


def parse_value(text: str) -> Any:
    """Parse a command-line value: numbers (``3e-4`` too), booleans, null, lists, or a plain string."""
    low = text.strip().lower()
    if low in ("none", "null", "~"):
        return None
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    if text.strip().startswith(("[", "{")):
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"cannot parse {text!r} as a list or mapping: {e}") from None
    return text


def _quoted(raw: str) -> str | None:
    """The inside of a quoted value ('2024' or "2024"), which is always a string; None if unquoted."""
    text = raw.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return None


def _only_str(tp: Any) -> bool:
    """Is ``tp`` ``str`` or ``str | None``?"""
    return tp is str or (typing.get_origin(tp) in (typing.Union, types.UnionType)
                         and {a for a in typing.get_args(tp) if a is not type(None)} == {str})


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``section.key=value`` overrides (``--`` prefixes allowed) to a run config, strictly.

    Values are parsed as numbers, booleans, null or lists; a quoted value ('2024') is always a string, and
    a field that only takes strings keeps the text as typed.
    """
    sections = {f.name for f in dataclasses.fields(RunConfig)}
    for item in overrides:
        item = item.removeprefix("--")
        if "=" not in item:
            raise ConfigError(f"override {item!r} needs the form key=value, e.g. optim.lr=3e-4")
        key, _, raw = item.partition("=")
        value = _quoted(raw)
        if value is None:
            value = parse_value(raw)
        head, _, rest = key.partition(".")
        if head not in sections:
            raise _unknown_key("", head, sorted(sections))
        if head == "init":
            cfg.init = None if value is None else raw.strip()
            continue
        if head == "model" and rest:
            cfg.model_args[rest] = value
        elif head in ("model", "model_args") and not rest:
            if head == "model":
                cfg.model = value if isinstance(value, str) else raw.strip()  # a name, as typed
            else:
                cfg.model_args = _coerce(value, dict, "model_args")
        elif head == "model_args":
            cfg.model_args[rest] = value
        else:
            section = getattr(cfg, head)
            if not rest:
                raise ConfigError(f"override {item!r} must name a key inside {head!r}, e.g. {head}.<key>=...")
            if "." in rest:
                raise _unknown_key(head, rest, list(_field_types(type(section))))
            if _only_str(_field_types(type(section)).get(rest)) and value is not None:
                value = raw  # a string field keeps the text as typed: train.out_dir=2024 is "2024"
            setattr(cfg, head, replace_strict(section, {rest: value}, head))
    return cfg


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe into a dict (errors name the file and the problem)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"recipe {str(p)!r} does not exist; pass the path to a YAML file (see recipes/)")
    try:
        with p.open(encoding="utf-8") as f:  # a stream, so YAML's messages name the file, not "<unicode string>"
            data = yaml.safe_load(f) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"recipe {str(p)!r} is not valid YAML: {e}") from None
    except OSError as e:
        raise ConfigError(f"recipe {str(p)!r} cannot be read ({e.strerror}); check its permissions") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {str(p)!r} must be a mapping of sections (model, data, optim, ...)")
    return data


def resolve_run_config(recipe: str | Path | dict | None, overrides: list[str] | None = None) -> RunConfig:
    """Recipe (a YAML path or dict) + dotted overrides -> a validated :class:`RunConfig`.

    In a recipe, ``model`` may be a name or a mapping ``{name: ..., <model config keys>...}``; an optional
    ``result`` section (the measured figure a recipe documents) is kept out of the config.
    """
    data = dict(load_yaml(recipe) if isinstance(recipe, (str, Path)) else (recipe or {}))
    data.pop("result", None)
    model = data.get("model")
    if isinstance(model, dict):
        model = dict(model)
        if "name" not in model:
            raise ConfigError("recipe: the model mapping needs a 'name' (a registered model, see `bigmodels models`)")
        data["model"] = model.pop("name")
        data["model_args"] = {**model, **data.get("model_args", {})}
    cfg = from_dict(RunConfig, data)
    return apply_overrides(cfg, list(overrides or []))
