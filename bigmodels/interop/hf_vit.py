"""Hugging Face ViT checkpoints <-> bigmodels' ``vit`` family (torchvision's parameter layout).

``bigmodels.load(dir)`` reads a ``transformers`` ``ViTModel`` or ``ViTForImageClassification`` directory
(config.json + model.safetensors), and ``bigmodels.save(model, dir, format="hf")`` writes one that
``transformers`` loads with the same outputs: a classifier as ViTForImageClassification, a model without
classifier (num_classes=0) as ViTModel.

Names (Hugging Face, with ``vit.`` before the backbone in ViTForImageClassification -> ours)::

    embeddings.cls_token                              -> class_token
    embeddings.patch_embeddings.projection            -> conv_proj
    embeddings.position_embeddings                    -> encoder.pos_embedding
    encoder.layer.{i}.layernorm_before / _after       -> encoder.layers.encoder_layer_{i}.ln_1 / ln_2
    encoder.layer.{i}.attention.attention.{query,key,value}
                                                      -> ...self_attention.in_proj_{weight,bias} (stacked q; k; v)
    encoder.layer.{i}.attention.output.dense          -> ...self_attention.out_proj
    encoder.layer.{i}.intermediate.dense / output.dense -> ...mlp.0 / mlp.3
    layernorm                                         -> encoder.ln
    pooler.dense (ViTModel)                           -> heads.pre_logits (+ tanh)
    classifier                                        -> heads.head

The names of transformers' modules in memory since version 5 (``layers.{i}.attention.{q,k,v,o}_proj``,
``layers.{i}.mlp.fc1/fc2``), which it maps to the names above when saving, are read as well.

ViTModel's pooler (dense + tanh on the class token) *is* torchvision's ``pre_logits`` + tanh, so a headless
ViTModel checkpoint that has one loads as ``num_classes=0, representation_size=<pooler width>`` and
``model(x)`` returns transformers' ``pooler_output``; one saved without it loads with no pre_logits and
``model(x)`` returns the normed class token. Hugging Face's ``layer_norm_eps`` (1e-12 by default there,
1e-6 in torchvision) is carried in ``ViTConfig.layer_norm_eps``.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import from_dict
from ..errors import CheckpointError, ConfigError
from ..models.vit import ViTConfig
from . import HFAdapter, hf_num_labels, preset_name, read_hf_state_dict

__all__ = ["ARCHITECTURES", "config_from_hf", "config_to_hf", "state_from_hf", "state_to_hf"]

log = logging.getLogger(__name__)

ARCHITECTURES = ("ViTModel", "ViTForImageClassification")
_DIMS = ("img_size", "patch_size", "num_layers", "num_heads", "hidden_dim", "mlp_dim")

_TOP = {  # module or parameter names outside the layers, Hugging Face -> ours
    "embeddings.cls_token": "class_token",
    "embeddings.position_embeddings": "encoder.pos_embedding",
    "embeddings.patch_embeddings.projection": "conv_proj",
    "layernorm": "encoder.ln",
    "pooler.dense": "heads.pre_logits",
    "classifier": "heads.head",
}
_LAYER = {  # inside a layer, Hugging Face (saved names, then transformers 5's module names) -> ours
    "layernorm_before": "ln_1",
    "layernorm_after": "ln_2",
    "attention.output.dense": "self_attention.out_proj",
    "intermediate.dense": "mlp.0",
    "output.dense": "mlp.3",
    "attention.o_proj": "self_attention.out_proj",
    "mlp.fc1": "mlp.0",
    "mlp.fc2": "mlp.3",
}
_QKV = {"attention.attention.query": 0, "attention.attention.key": 1, "attention.attention.value": 2,
        "attention.q_proj": 0, "attention.k_proj": 1, "attention.v_proj": 2}
_SAVED_QKV = ("attention.attention.query", "attention.attention.key", "attention.attention.value")
_TOP_INV = {v: k for k, v in _TOP.items()}
_LAYER_INV = {v: k for k, v in list(_LAYER.items())[:5]}  # write the saved (legacy) names
_HF_LAYER = re.compile(r"(?:encoder\.layer|layers)\.(\d+)\.(.+)")
_OUR_LAYER = re.compile(r"encoder\.layers\.encoder_layer_(\d+)\.(.+)")
_DROPPED = ("embeddings.mask_token",)  # masked image modelling only (ViTForMaskedImageModeling)


# ---------------------------------------------------------------------------------------------- config


def _square(hf: dict[str, Any], key: str, directory: Path) -> int:
    value = hf.get(key, {"image_size": 224, "patch_size": 16}[key])
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise CheckpointError(f"{directory}: {key}={value} is not square; bigmodels' ViT takes square "
                                  f"{key.replace('_size', '')}s")
        value = value[0]
    return int(value)


def _checkpoint_keys(directory: Path) -> set[str]:
    """Parameter names stored in the directory, read without loading the tensors where the format allows."""
    single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
    try:
        if single.is_file():
            from safetensors import safe_open

            with safe_open(str(single), "pt") as f:
                return set(f.keys())
        if index.is_file():
            return set(json.loads(index.read_text(encoding="utf-8"))["weight_map"])
    except Exception as e:  # truncated or foreign files
        raise CheckpointError(f"{directory}: the weights are unreadable ({type(e).__name__}: {e})") from None
    return set(read_hf_state_dict(directory))


def config_from_hf(hf: dict[str, Any], directory: Path) -> tuple[str, str, Any]:
    """A transformers ViT config.json -> (name, task, ViTConfig)."""
    arch = (hf.get("architectures") or ["ViTModel"])[0]
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{directory}: architecture {arch!r} is not supported; bigmodels reads "
                              f"{', '.join(ARCHITECTURES)}")
    if hf.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"{directory}: hidden_act={hf['hidden_act']!r} is not supported; bigmodels' ViT uses "
                              "the exact GELU (hidden_act='gelu')")
    if hf.get("qkv_bias", True) is not True:
        raise CheckpointError(f"{directory}: qkv_bias={hf['qkv_bias']!r} is not supported; bigmodels' ViT has "
                              "query/key/value biases (qkv_bias=true)")
    kwargs: dict[str, Any] = {
        "img_size": _square(hf, "image_size", directory), "patch_size": _square(hf, "patch_size", directory),
        "in_chans": hf.get("num_channels", 3), "hidden_dim": hf.get("hidden_size", 768),
        "num_layers": hf.get("num_hidden_layers", 12), "num_heads": hf.get("num_attention_heads", 12),
        "mlp_dim": hf.get("intermediate_size", 3072), "layer_norm_eps": hf.get("layer_norm_eps", 1e-12),
        "dropout": hf.get("hidden_dropout_prob", 0.0), "attention_dropout": hf.get("attention_probs_dropout_prob", 0.0),
    }
    if arch == "ViTForImageClassification":
        kwargs["num_classes"] = hf_num_labels(hf)
    else:
        kwargs["num_classes"] = 0
        if any(k.removeprefix("vit.").startswith("pooler.") for k in _checkpoint_keys(directory)):
            if hf.get("pooler_act", "tanh") != "tanh":
                raise CheckpointError(f"{directory}: pooler_act={hf['pooler_act']!r} is not supported; the pooler "
                                      "loads as pre_logits + tanh (pooler_act='tanh')")
            kwargs["representation_size"] = hf.get("pooler_output_size") or kwargs["hidden_dim"]
    try:
        config = from_dict(ViTConfig, kwargs, "vit")
    except ConfigError as e:
        raise CheckpointError(f"{directory / 'config.json'}: {e}") from None
    return preset_name("vit", config, _DIMS), "image_classification", config


def config_to_hf(model: nn.Module) -> dict[str, Any]:
    """The transformers ``config.json`` for ``model``: ViTForImageClassification, or ViTModel without classifier."""
    c = model.config
    if c.pool != "cls":
        raise ConfigError(f"transformers' ViT classifies the class token; this model pools by {c.pool!r}, so it has "
                          "no Hugging Face form: save it with format='bigmodels' (the default)")
    if c.representation_size is not None and c.num_classes > 0:
        raise ConfigError("transformers' ViTForImageClassification has no pre_logits layer (representation_size="
                          f"{c.representation_size}); save it with format='bigmodels', or call "
                          "reset_classifier(0) to save the backbone and its pre_logits as a ViTModel with a pooler")
    hf: dict[str, Any] = {
        "model_type": "vit", "architectures": ["ViTForImageClassification" if c.num_classes else "ViTModel"],
        "image_size": c.img_size, "patch_size": c.patch_size, "num_channels": c.in_chans,
        "hidden_size": c.hidden_dim, "num_hidden_layers": c.num_layers, "num_attention_heads": c.num_heads,
        "intermediate_size": c.mlp_dim, "hidden_act": "gelu", "layer_norm_eps": c.layer_norm_eps,
        "hidden_dropout_prob": c.dropout, "attention_probs_dropout_prob": c.attention_dropout, "qkv_bias": True,
        "initializer_range": 0.02, "encoder_stride": c.patch_size,
        "pooler_output_size": c.representation_size or c.hidden_dim, "pooler_act": "tanh",
    }
    if c.num_classes:
        names = (getattr(getattr(model, "info", None), "meta", None) or {}).get("class_names")  # ModelInfo.meta
        if not (isinstance(names, list) and len(names) == c.num_classes):
            names = [f"LABEL_{i}" for i in range(c.num_classes)]
        hf["id2label"] = {str(i): str(n) for i, n in enumerate(names)}
        hf["label2id"] = {str(n): i for i, n in enumerate(names)}
    return hf


# ---------------------------------------------------------------------------------------------- weights


def _hf_to_ours(key: str) -> str:
    module, _, param = key.rpartition(".")
    layer = _HF_LAYER.fullmatch(module)
    if layer and layer[2] in _LAYER:
        return f"encoder.layers.encoder_layer_{layer[1]}.{_LAYER[layer[2]]}.{param}"
    if key in _TOP:  # class token, positions: parameters, not modules
        return _TOP[key]
    if module in _TOP:
        return f"{_TOP[module]}.{param}"
    return key  # unknown: kept, so the loader reports it as unexpected


def state_from_hf(sd: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """Rename a transformers ViT state dict to torchvision's layout, stacking query/key/value into in_proj."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], list[torch.Tensor | None]] = {}  # (layer, weight|bias) -> [q, k, v]
    for key, value in sd.items():
        key = key.removeprefix("vit.")
        if key in _DROPPED:
            log.info("%s is not used by the ViT backbone (masked image modelling only): dropped", key)
            continue
        module, _, param = key.rpartition(".")
        layer = _HF_LAYER.fullmatch(module)
        if layer and layer[2] in _QKV:
            qkv.setdefault((layer[1], param), [None, None, None])[_QKV[layer[2]]] = value
            continue
        out[_hf_to_ours(key)] = value
    for (i, param), parts in qkv.items():
        if any(p is None for p in parts):
            raise CheckpointError(f"layer {i} has only some of the query/key/value {param}s; the checkpoint is "
                                  "incomplete, re-save it")
        out[f"encoder.layers.encoder_layer_{i}.self_attention.in_proj_{param}"] = torch.cat(parts, dim=0)
    return out


def state_to_hf(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Our state dict -> transformers' saved names (``vit.`` before the backbone of a classifier)."""
    config_to_hf(model)  # raise for a model with no Hugging Face form before anything is written
    prefix = "vit." if model.config.num_classes else ""
    out = {}
    for key, value in sd.items():
        module, _, param = key.rpartition(".")
        layer = _OUR_LAYER.fullmatch(module)
        if layer and layer[2] == "self_attention" and param.startswith("in_proj_"):
            kind = param.removeprefix("in_proj_")
            for name, part in zip(_SAVED_QKV, value.chunk(3, dim=0), strict=True):
                out[f"{prefix}encoder.layer.{layer[1]}.{name}.{kind}"] = part
        elif layer:
            out[f"{prefix}encoder.layer.{layer[1]}.{_LAYER_INV[layer[2]]}.{param}"] = value
        elif key in _TOP_INV:
            out[prefix + _TOP_INV[key]] = value
        else:
            hf = f"{_TOP_INV[module]}.{param}"
            out[hf if hf.startswith("classifier.") else prefix + hf] = value
    return out


ADAPTER = HFAdapter("vit", "vit", config_from_hf, config_to_hf, state_from_hf, state_to_hf)
