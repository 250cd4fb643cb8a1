"""Hugging Face Marian (OPUS-MT) checkpoints <-> bigmodels' ``transformer`` family.

``bigmodels.load(dir)`` reads a ``transformers`` MarianMTModel or MarianModel directory (config.json +
model.safetensors or pytorch_model.bin), and ``bigmodels.save(model, dir, format="hf")`` writes a
MarianMTModel directory that ``transformers`` loads. Our module names are Marian's without the ``model.``
prefix, so the map is short::

    model.shared.weight                    -> shared.weight (and encoder/decoder.embed_tokens, lm_head: the same
                                              tensor when share_encoder_decoder_embeddings / tie_word_embeddings)
    model.{encoder,decoder}.embed_tokens   -> {encoder,decoder}.embed_tokens  (unshared vocabularies)
    model.{encoder,decoder}.layers.{i}.*   -> {encoder,decoder}.layers.{i}.*  (self_attn.{q,k,v,out}_proj,
                                              self_attn_layer_norm, encoder_attn, encoder_attn_layer_norm,
                                              fc1, fc2, final_layer_norm)
    lm_head.weight                         -> lm_head.weight (stored only when untied)
    final_logits_bias (1, V), a buffer     -> final_logits_bias
    model.{encoder,decoder}.embed_positions -> dropped: sinusoids, rebuilt from the config (sin | cos halves)

Marian is post-norm with no embedding LayerNorm and LayerNorm eps 1e-5; a model with other choices has no
Marian form and is refused on export (save it with format='bigmodels').
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import from_dict
from ..errors import CheckpointError, ConfigError
from ..models.transformer import TransformerConfig
from . import HFAdapter, preset_name

__all__ = ["config_from_hf", "config_to_hf", "state_from_hf", "state_to_hf"]

log = logging.getLogger(__name__)

_ARCHITECTURES = ("MarianMTModel", "MarianModel")
_ACTIVATIONS_FROM_HF = {"relu": "relu", "gelu": "gelu", "swish": "swish", "silu": "swish"}
_ACTIVATIONS_TO_HF = {"relu": "relu", "gelu": "gelu", "swish": "swish"}
_DIMS = ("src_vocab_size", "tgt_vocab_size", "d_model", "num_encoder_layers", "num_decoder_layers", "num_heads",
         "d_ff")
# (ours, what Marian implements): a model must match these to have a Marian form
_TOP_LEVEL = ("lm_head.weight", "final_logits_bias")  # MarianMTModel's own, outside its ``model``
_MARIAN_FIXED = {"norm_first": False, "layernorm_embedding": False, "positions": "halves", "layer_norm_eps": 1e-5}


def _one_id(hf: dict[str, Any], key: str, directory: Path, default: int | None) -> int | None:
    value = hf.get(key, default)
    if isinstance(value, list):
        if len(value) != 1:
            raise CheckpointError(f"{directory}: {key}={value} names several tokens; bigmodels decodes with one")
        value = value[0]
    return value


def config_from_hf(hf: dict[str, Any], directory: Path) -> tuple[str, str, Any]:
    """A Marian config.json -> (name, "translation", TransformerConfig)."""
    arch = (hf.get("architectures") or ["MarianMTModel"])[0]
    if arch not in _ARCHITECTURES:
        raise CheckpointError(f"{directory}: architecture {arch!r} is not supported; bigmodels reads "
                              f"{' and '.join(_ARCHITECTURES)}")
    if hf.get("normalize_before") or hf.get("add_final_layer_norm") or hf.get("normalize_embedding"):
        raise CheckpointError(f"{directory}: a pre-norm Marian (normalize_before / add_final_layer_norm / "
                              "normalize_embedding) is not supported; bigmodels reads the post-norm OPUS-MT layout")
    for enc, dec in (("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
        if hf.get(enc) != hf.get(dec):
            raise CheckpointError(f"{directory}: {enc}={hf.get(enc)} != {dec}={hf.get(dec)}; bigmodels' Transformer "
                                  "uses one value for both stacks")
    act = hf.get("activation_function", "gelu")
    if act not in _ACTIVATIONS_FROM_HF:
        raise CheckpointError(f"{directory}: activation_function={act!r} is not supported; bigmodels' Transformer "
                              f"implements {', '.join(_ACTIVATIONS_FROM_HF)}")
    for key in ("encoder_layerdrop", "decoder_layerdrop"):
        if hf.get(key):
            log.info("%s: %s=%s is not implemented (training only); ignored", directory, key, hf[key])
    share = hf.get("share_encoder_decoder_embeddings", True)
    vocab = hf.get("vocab_size", 58101)
    kwargs = {
        "src_vocab_size": vocab,
        "tgt_vocab_size": vocab if share else (hf.get("decoder_vocab_size") or vocab),
        "d_model": hf.get("d_model", 1024),
        "num_encoder_layers": hf.get("encoder_layers", 12),
        "num_decoder_layers": hf.get("decoder_layers", 12),
        "num_heads": hf.get("encoder_attention_heads", 16),
        "d_ff": hf.get("encoder_ffn_dim", 4096),
        "dropout": hf.get("dropout", 0.1),
        "attention_dropout": hf.get("attention_dropout", 0.0),
        "activation_dropout": hf.get("activation_dropout", 0.0),
        "activation": _ACTIVATIONS_FROM_HF[act],
        "norm_first": False,
        "share_embeddings": share,
        "tie_output": hf.get("tie_word_embeddings", True),
        "scale_embedding": hf.get("scale_embedding", False),
        "max_position_embeddings": hf.get("max_position_embeddings", 1024),
        "positions": "halves",
        "layernorm_embedding": False,
        "final_logits_bias": arch == "MarianMTModel",  # MarianModel has no output layer of its own
        # MarianConfig's defaults where config.json leaves a field out
        "pad_token_id": _one_id(hf, "pad_token_id", directory, 58100),
        "bos_token_id": _one_id(hf, "bos_token_id", directory, None),
        "eos_token_id": _one_id(hf, "eos_token_id", directory, 0),
        "decoder_start_token_id": _one_id(hf, "decoder_start_token_id", directory, 58100),
        "layer_norm_eps": 1e-5,  # Marian's LayerNorms use PyTorch's default
    }
    if arch == "MarianModel" and not kwargs["tie_output"]:
        raise CheckpointError(f"{directory}: a MarianModel with tie_word_embeddings=false has no output layer; "
                              "load the MarianMTModel checkpoint")
    try:
        config = from_dict(TransformerConfig, kwargs, "transformer")
    except ConfigError as e:
        raise CheckpointError(f"{directory / 'config.json'}: {e}") from None
    return preset_name("transformer", config, _DIMS), "translation", config


def _check_expressible(model: nn.Module) -> None:
    c = model.config
    for key, marian in _MARIAN_FIXED.items():
        if getattr(c, key) != marian:
            raise ConfigError(f"a Transformer with {key}={getattr(c, key)!r} has no Hugging Face Marian form (Marian "
                              f"has {key}={marian!r}); save it with format='bigmodels' (the default)")


def config_to_hf(model: nn.Module) -> dict[str, Any]:
    """The transformers ``config.json`` of a MarianMTModel equal to ``model``."""
    _check_expressible(model)
    c = model.config
    return {
        "model_type": "marian",
        "architectures": ["MarianMTModel"],
        "vocab_size": c.src_vocab_size,
        "decoder_vocab_size": c.tgt_vocab_size,
        "d_model": c.d_model,
        "encoder_layers": c.num_encoder_layers,
        "decoder_layers": c.num_decoder_layers,
        "encoder_attention_heads": c.num_heads,
        "decoder_attention_heads": c.num_heads,
        "encoder_ffn_dim": c.d_ff,
        "decoder_ffn_dim": c.d_ff,
        "activation_function": _ACTIVATIONS_TO_HF[c.activation],
        "dropout": c.dropout,
        "attention_dropout": c.attention_dropout,
        "activation_dropout": c.activation_dropout,
        "max_position_embeddings": c.max_position_embeddings,
        "scale_embedding": c.scale_embedding,
        "share_encoder_decoder_embeddings": c.share_embeddings,
        "tie_word_embeddings": c.tie_output,
        "pad_token_id": c.pad_token_id,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
        "decoder_start_token_id": c.decoder_start_token_id,
        # bigmodels' translate does not force eos at the length limit; neither should transformers' generate
        "forced_eos_token_id": None,
        "is_encoder_decoder": True,
        "encoder_layerdrop": 0.0,
        "decoder_layerdrop": 0.0,
        "init_std": 0.02,
        "use_cache": True,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }


def _embedding_keys(config: Any) -> tuple[str, ...]:
    """Our names that hold the target (or joint) embedding tensor besides its owner: filled from it on load,
    left out on export (transformers ties them again)."""
    shared = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight") if config.share_embeddings else ()
    return (*shared, *(("lm_head.weight",) if config.tie_output else ()))


def state_from_hf(sd: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """A transformers Marian state dict -> ours (prefix off, sinusoids dropped, tied tensors filled in)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        key = key.removeprefix("model.")
        if key.endswith("embed_positions.weight"):
            continue  # the fixed sinusoids: rebuilt from the config
        out[key] = value
    if config.share_embeddings:
        table = out.pop("shared.weight", None)
        table = table if table is not None else out.get("encoder.embed_tokens.weight")
        if table is not None:
            out["shared.weight"] = table
            out["encoder.embed_tokens.weight"] = out["decoder.embed_tokens.weight"] = table
    if config.tie_output:
        out.pop("lm_head.weight", None)  # old checkpoints store the tied copy
        if "decoder.embed_tokens.weight" in out:
            out["lm_head.weight"] = out["decoder.embed_tokens.weight"]
    if not config.final_logits_bias:
        bias = out.pop("final_logits_bias", None)
        if bias is not None and bias.abs().max() > 0:
            raise CheckpointError("the checkpoint has a non-zero final_logits_bias but the config has none")
    return out


def state_to_hf(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Our state dict -> a MarianMTModel's (one copy of each tied tensor; a zero final_logits_bias if we have none)."""
    _check_expressible(model)
    c = model.config
    skip = _embedding_keys(c)
    out = {}
    for key, value in sd.items():
        if key in skip:
            continue
        out[key if key in _TOP_LEVEL else f"model.{key}"] = value
    if "final_logits_bias" not in out:
        out["final_logits_bias"] = torch.zeros(1, c.tgt_vocab_size, dtype=next(model.parameters()).dtype)
    return out


ADAPTER = HFAdapter("marian", "transformer", config_from_hf, config_to_hf, state_from_hf, state_to_hf)
