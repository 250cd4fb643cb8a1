"""LoRA for any model (Hu et al. 2021): low-rank adapters on the Linear layers chosen by name pattern, a
trainable-parameter report, the adapters saved alone (safetensors + their config) and loaded onto the base, and a
merge back into plain weights. The adapters themselves are :mod:`bigmodels.nn.lora` (the trainer applies them
with ``lora.rank=...``); this module adds their files.

    >>> import bigmodels, tempfile, torch
    >>> model = bigmodels.create_model("mlp_small")
    >>> print(add_lora_(model, targets=["layers.*"], rank=4, train_modules=["fc"]))  # doctest: +ELLIPSIS
    LoRA r=4 alpha=16 on 2 Linear layers + fc in full: ... parameters trainable (...%)
    >>> directory = save_lora(model, tempfile.mkdtemp())
    >>> base = bigmodels.create_model("mlp_small")  # in practice: the same pretrained base
    >>> load_lora(base, directory).wrapped
    ['mlp.layers.0', 'mlp.layers.2']
    >>> merge_lora_(base)
    2
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import CheckpointError, ConfigError
from ..models._contract import model_info
from ..nn.lora import (
    LoRALinear,
    LoRAReport,
    add_lora_,
    load_merged_state_dict_,
    lora_modules,
    lora_state_dict,
    merge_lora_,
    merged_copy,
)

__all__ = [
    "LoRALinear", "LoRAReport", "add_lora_", "merge_lora_", "lora_modules", "save_lora", "load_lora",
    "lora_state_dict", "merged_copy", "load_merged_state_dict_", "ADAPTER_FILE", "ADAPTER_CONFIG",
]

ADAPTER_FILE = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def save_lora(model: nn.Module, directory: str | Path) -> Path:
    """Write the adapters (and the ``train_modules``' parameters) alone: ``adapter.safetensors`` and
    ``adapter_config.json`` (rank, alpha, targets, the base model's name and family) in ``directory``.

    >>> import bigmodels, tempfile
    >>> model = bigmodels.create_model("mlp_small")
    >>> _ = add_lora_(model, targets=["layers.0"], rank=2)
    >>> path = save_lora(model, tempfile.mkdtemp())
    >>> sorted(p.name for p in path.iterdir())
    ['adapter.safetensors', 'adapter_config.json']
    """
    from safetensors.torch import save_file

    from .._files import atomic_write

    report: LoRAReport | None = getattr(model, "lora_report", None)
    if report is None or not lora_modules(model):
        raise ConfigError("save_lora: this model has no LoRA adapters; add them with add_lora_(model, targets=...)")
    info = model_info(model)
    record = {"format": "bigmodels-lora", **{k: v for k, v in asdict(report).items() if k not in ("trainable",
                                                                                                 "total")},
              "base_model": info.name, "base_family": info.family}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous().cpu() for k, v in lora_state_dict(model).items()}
    atomic_write(directory / ADAPTER_FILE, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    atomic_write(directory / ADAPTER_CONFIG, lambda p: p.write_text(json.dumps(record, indent=2) + "\n"))
    return directory


def load_lora(model: nn.Module, directory: str | Path) -> LoRAReport:
    """Add the adapters saved by :func:`save_lora` in ``directory`` to ``model`` (the same base: family and
    layer names) and load their weights; returns the report. ``merge_lora_`` then makes it a plain model.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    config_path, weights = directory / ADAPTER_CONFIG, directory / ADAPTER_FILE
    if not config_path.is_file() or not weights.is_file():
        raise CheckpointError(f"{directory} holds no LoRA adapter ({ADAPTER_CONFIG} and {ADAPTER_FILE}); pass the "
                              "directory save_lora wrote")
    try:
        record: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
        tensors = load_file(str(weights))
    except (ValueError, OSError, SafetensorError) as e:
        raise CheckpointError(f"{directory}: the adapter files are unreadable ({e}); save them again") from None
    family = model_info(model).family
    if record.get("base_family") != family:
        raise ConfigError(f"{directory} adapts a {record.get('base_family')} model ({record.get('base_model')}) but "
                          f"this model is a {family} model; load the adapter onto its own base model")
    report = add_lora_(model, record["targets"], record["rank"], record["alpha"], record["dropout"],
                       train_modules=record["train_modules"])
    if report.wrapped != record["wrapped"]:
        raise ConfigError(f"{directory} adapts the layers {record['wrapped'][:5]}... but on this model its targets "
                          f"match {report.wrapped[:5]}...; load the adapter onto the base model it was trained on")
    expected = lora_state_dict(model)
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{weights} does not fit this model: missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]}")
    try:
        model.load_state_dict(tensors, strict=False)
    except RuntimeError as e:  # shapes differ: another width or rank
        raise CheckpointError(f"{weights} has tensors of other shapes than this model's adapters ({e}); load it "
                              "onto the base model it was trained on") from None
    return report
