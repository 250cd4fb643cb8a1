"""The model contract: what every later stage (train, infer, compress, explain, export, serve) may rely on.

Written once here and checked over every registered model by ``tests/models/test_contract.py``. A stage that
acts on "any model" uses only what this file names; it never imports a specific family.

- :class:`ModelInfo`: who a model is (registry name, family, task) and where it came from (source, path,
  format-specific meta), attached to every model that the registry, ``load`` or an interop adapter builds.
- :func:`example_inputs`: a batch that any registered model accepts, built from its config and task, so
  every stage and test can drive any model: ``call(model, example_inputs(model))``.
- :func:`call`: run a model on the batch form its task uses (a tensor, or a dict of keyword arguments).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["ModelInfo", "model_info", "set_model_info", "example_inputs", "call", "VOCAB_TASKS"]

# tasks whose input is token ids (B, T)
VOCAB_TASKS = ("language_modeling", "sequence_classification", "token_classification", "question_answering",
               "masked_language_modeling", "sentence_embedding")


@dataclass
class ModelInfo:
    """Who a model is and where it came from.

    ``name``: the registered preset (``"resnet50"``), or the family where a loaded model matches no preset;
    ``family``: the registry family that built it; ``task``: the registry task its head solves;
    ``source``: ``"registry"`` (built by name), ``"bigmodels"`` (a saved directory), ``"huggingface"``,
    ``"torchvision"``, ...; ``path``: the file or directory it was read from; ``meta``: format-specific facts
    a stage may need (class names, preprocessing, the tokenizer's location).
    """

    name: str
    family: str
    task: str
    source: str = "registry"
    path: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def model_info(model: nn.Module) -> ModelInfo:
    """The :class:`ModelInfo` of a bigmodels model; a clear error for a module the registry did not build."""
    info = getattr(model, "info", None)
    if not isinstance(info, ModelInfo):
        from ..errors import ConfigError

        raise ConfigError(f"{type(model).__name__} carries no ModelInfo: build it with bigmodels.create_model(name) "
                          "or read it with bigmodels.load(path)")
    return info


def set_model_info(model: nn.Module, info: ModelInfo) -> nn.Module:
    """Attach ``info``; a family whose head decides its task (``type(model).task``) keeps that task."""
    task = getattr(type(model), "task", None)
    if isinstance(task, property):
        info.task = model.task
    model.info = info
    return model


def call(model: nn.Module, x: torch.Tensor | dict[str, torch.Tensor]):
    """Run ``model`` on a batch: a tensor is the first argument, a dict the keyword arguments (seq2seq)."""
    return model(**x) if isinstance(x, dict) else model(x)


def example_inputs(model: nn.Module, batch: int = 2, *, seq_len: int = 16, seed: int = 0
                   ) -> torch.Tensor | dict[str, torch.Tensor]:
    """A batch ``model`` accepts, built from its config and task: images (B, C, H, W), token ids (B, T), or
    the keyword arguments of an encoder-decoder. ``call(model, example_inputs(model))`` runs it.

    >>> import bigmodels
    >>> model = bigmodels.create_model("gpt_mini")
    >>> example_inputs(model).shape
    torch.Size([2, 16])
    """
    g = torch.Generator().manual_seed(seed)
    cfg, task = model.config, model_info(model).task
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if task == "image_classification":
        side = getattr(cfg, "img_size", None) or 32  # fully convolutional families take any size
        return torch.randn(batch, cfg.in_chans, side, side, generator=g).to(device)
    if task in VOCAB_TASKS:
        seq_len = min(seq_len, getattr(cfg, "block_size", None) or getattr(cfg, "max_position_embeddings", None)
                      or seq_len)
        return torch.randint(0, cfg.vocab_size, (batch, seq_len), generator=g, dtype=torch.int64).to(device)
    if task == "translation":  # source ids, their mask, and the shifted target ids (teacher forcing)
        return {"input_ids": torch.randint(3, cfg.src_vocab_size, (batch, seq_len), generator=g).to(device),
                "attention_mask": torch.ones(batch, seq_len, dtype=torch.int64, device=device),
                "decoder_input_ids": torch.randint(3, cfg.tgt_vocab_size, (batch, seq_len), generator=g).to(device)}
    raise NotImplementedError(f"example_inputs knows no input for task {task!r}: extend models/_contract.py")
