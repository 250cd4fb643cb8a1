"""Hugging Face BERT checkpoints <-> bigmodels' ``bert`` family: config fields, architectures, parameter names.

``bigmodels.load(dir)`` reads a ``transformers`` BERT directory (BertModel, BertForPreTraining,
BertForMaskedLM, BertFor{Sequence,Token}Classification, BertForQuestionAnswering) or a sentence-transformers
one (``modules.json``: Transformer -> Pooling (mean | cls) -> optional Normalize), and
``bigmodels.save(model, dir, format="hf")`` writes one ``transformers`` loads; for an embedding model (head
``embedding``) it is a sentence-transformers directory too (``modules.json``, the pooling config, Normalize and the
tokenizer), which ``SentenceTransformer(dir)`` loads to the same vectors. :func:`save_sentence_transformers`
does the same with a chosen ``max_seq_length``.

Names (Hugging Face, with ``bert.`` before the backbone in every class but BertModel -> ours)::

    embeddings.{word,position,token_type}_embeddings  -> embeddings.{...}
    embeddings.LayerNorm                               -> embeddings.norm
    encoder.layer.{i}.attention.self.{query,key,value} -> layers.{i}.attn.{q,k,v}_proj
    encoder.layer.{i}.attention.output.dense           -> layers.{i}.attn.out_proj
    encoder.layer.{i}.attention.output.LayerNorm       -> layers.{i}.attn_norm
    encoder.layer.{i}.intermediate.dense               -> layers.{i}.fc1
    encoder.layer.{i}.output.dense                     -> layers.{i}.fc2
    encoder.layer.{i}.output.LayerNorm                 -> layers.{i}.mlp_norm
    pooler.dense                                       -> pooler.dense
    cls.predictions.transform.{dense,LayerNorm}        -> lm_head.{dense,norm}
    cls.predictions.bias                               -> lm_head.decoder.bias  (decoder.weight: tied, not stored)
    cls.seq_relationship                               -> nsp
    classifier, qa_outputs                             -> classifier, qa_outputs
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._files import atomic_write
from ..config import from_dict
from ..errors import CheckpointError, ConfigError
from ..models.bert import BertConfig
from . import HFAdapter, hf_num_labels, preset_name, save_hf, source_tokenizer, write_tokenizer

__all__ = ["ARCHITECTURES", "config_from_hf", "config_to_hf", "state_from_hf", "state_to_hf",
           "save_sentence_transformers", "sentence_transformers_files"]

log = logging.getLogger(__name__)

ARCHITECTURES = {  # transformers class -> bigmodels head
    "BertModel": "encoder",
    "BertForPreTraining": "pretraining",
    "BertForMaskedLM": "mlm",
    "BertForSequenceClassification": "sequence_classification",
    "BertForTokenClassification": "token_classification",
    "BertForQuestionAnswering": "question_answering",
}
_ARCH_OF_HEAD = {head: arch for arch, head in ARCHITECTURES.items()} | {"embedding": "BertModel"}
_BARE_HEADS = ("encoder", "embedding")  # saved as BertModel: backbone names without the "bert." prefix
# config fields shared verbatim with transformers.BertConfig
_SHARED_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                  "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "hidden_dropout_prob",
                  "attention_probs_dropout_prob", "hidden_act", "pad_token_id", "initializer_range",
                  "classifier_dropout")
_DIMS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
         "max_position_embeddings", "type_vocab_size")

_TOP = {  # module names outside the layers, Hugging Face -> ours
    "embeddings.word_embeddings": "embeddings.word_embeddings",
    "embeddings.position_embeddings": "embeddings.position_embeddings",
    "embeddings.token_type_embeddings": "embeddings.token_type_embeddings",
    "embeddings.LayerNorm": "embeddings.norm",
    "pooler.dense": "pooler.dense",
    "cls.predictions.transform.dense": "lm_head.dense",
    "cls.predictions.transform.LayerNorm": "lm_head.norm",
    "cls.seq_relationship": "nsp",
    "classifier": "classifier",
    "qa_outputs": "qa_outputs",
}
_LAYER = {  # inside encoder.layer.{i}, Hugging Face -> ours
    "attention.self.query": "attn.q_proj",
    "attention.self.key": "attn.k_proj",
    "attention.self.value": "attn.v_proj",
    "attention.output.dense": "attn.out_proj",
    "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "fc1",
    "output.dense": "fc2",
    "output.LayerNorm": "mlp_norm",
}
_TOP_INV = {v: k for k, v in _TOP.items()}
_LAYER_INV = {v: k for k, v in _LAYER.items()}
# buffers, and the decoder that transformers ties to the word embeddings (its bias is cls.predictions.bias)
_DROPPED = ("embeddings.position_ids", "embeddings.token_type_ids", "cls.predictions.decoder.weight",
            "cls.predictions.decoder.bias")
_LEGACY = {"gamma": "weight", "beta": "bias"}  # TF-converted checkpoints name LayerNorm parameters so


# ---------------------------------------------------------------------------------------------- config


def _sentence_transformers_pooling(directory: Path) -> dict[str, Any] | None:
    """``{"pooling", "normalize"}`` from a sentence-transformers directory (modules.json); None for plain HF."""
    modules_file = directory / "modules.json"
    if not modules_file.is_file():
        return None
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
        types = [m["type"].rsplit(".", 1)[-1] for m in modules]
        pooling_dir = next(directory / m["path"] for m in modules if m["type"].endswith(".Pooling"))
        pooling = json.loads((pooling_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError, StopIteration) as e:
        raise CheckpointError(f"{directory}: modules.json or its Pooling config is unreadable or incomplete "
                              f"({type(e).__name__}: {e}); re-save the sentence-transformers model") from None
    unsupported = [t for t in types if t not in ("Transformer", "Pooling", "Normalize")]
    if unsupported:
        raise CheckpointError(f"{directory}: sentence-transformers module(s) {unsupported} are not supported; "
                              "bigmodels reads Transformer -> Pooling -> Normalize")
    modes = [k.removeprefix("pooling_mode_") for k, v in pooling.items() if k.startswith("pooling_mode_") and v]
    if modes == ["mean_tokens"]:
        mode = "mean"
    elif modes == ["cls_token"]:
        mode = "cls"
    else:
        raise CheckpointError(f"{directory}: pooling mode(s) {modes} are not supported; bigmodels pools by "
                              "mean_tokens or cls_token (one of them)")
    return {"pooling": mode, "normalize": "Normalize" in types}


def config_from_hf(hf: dict[str, Any], directory: Path) -> tuple[str, str, Any]:
    """A Hugging Face BERT config.json (+ sentence-transformers files) -> (name, task, BertConfig)."""
    archs = hf.get("architectures") or ["BertModel"]
    arch = archs[0]
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{directory}: architecture {arch!r} is not supported; bigmodels reads "
                              f"{', '.join(ARCHITECTURES)}")
    if hf.get("position_embedding_type", "absolute") != "absolute" or hf.get("is_decoder") \
            or hf.get("add_cross_attention"):
        raise CheckpointError(f"{directory}: only encoder BERTs with absolute positions are supported (this one has "
                              f"position_embedding_type={hf.get('position_embedding_type')!r}, "
                              f"is_decoder={hf.get('is_decoder')})")
    head = ARCHITECTURES[arch]
    if head in ("pretraining", "mlm") and hf.get("tie_word_embeddings") is False:
        raise CheckpointError(f"{directory}: tie_word_embeddings=false is not supported; the masked-LM decoder "
                              "must share the word embeddings")
    kwargs: dict[str, Any] = {k: hf[k] for k in _SHARED_FIELDS if k in hf}
    kwargs["head"] = head
    if head in ("sequence_classification", "token_classification"):
        kwargs["num_labels"] = hf_num_labels(hf)
    st = _sentence_transformers_pooling(directory) if arch == "BertModel" else None
    if st is not None:
        # transformers' BertModel, which sentence-transformers wraps, always has a pooler (initialised when
        # the checkpoint has none); keep it so the parameters round-trip exactly
        kwargs.update(head="embedding", add_pooling_layer=True, **st)
    try:
        config = from_dict(BertConfig, kwargs, "bert")
    except ConfigError as e:
        raise CheckpointError(f"{directory / 'config.json'}: {e}") from None
    return preset_name("bert", config, _DIMS), config.task, config


def config_to_hf(model: nn.Module) -> dict[str, Any]:
    """The transformers ``config.json`` for ``model`` (architectures from its head)."""
    c = model.config
    if c.head == "sequence_classification" and c.classifier_pooling != "pooler":
        raise ConfigError(f"transformers' BertForSequenceClassification reads the pooler; this classifier reads the "
                          f"{c.classifier_pooling}-pooled tokens, so it has no Hugging Face form: save it with "
                          "format='bigmodels' (the default)")
    hf: dict[str, Any] = {"model_type": "bert", "architectures": [_ARCH_OF_HEAD[c.head]]}
    hf.update({k: getattr(c, k) for k in _SHARED_FIELDS})
    hf.update(position_embedding_type="absolute", tie_word_embeddings=True)
    n = c.num_labels if c.head in ("sequence_classification", "token_classification", "question_answering") else 0
    if n:
        hf["id2label"] = {str(i): f"LABEL_{i}" for i in range(n)}
        hf["label2id"] = {f"LABEL_{i}": i for i in range(n)}
    return hf


# ---------------------------------------------------------------------------------------------- weights


def _hf_to_ours(key: str) -> str:
    module, _, param = key.rpartition(".")
    param = _LEGACY.get(param, param) if module.endswith("LayerNorm") else param
    layer = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)", module)
    if layer and layer[2] in _LAYER:
        return f"layers.{layer[1]}.{_LAYER[layer[2]]}.{param}"
    if module in _TOP:
        return f"{_TOP[module]}.{param}"
    if key == "cls.predictions.bias":
        return "lm_head.decoder.bias"
    return key  # unknown: kept, so the loader reports it as unexpected


def _ours_to_hf(key: str) -> str:
    module, _, param = key.rpartition(".")
    layer = re.fullmatch(r"layers\.(\d+)\.(.+)", module)
    if layer and layer[2] in _LAYER_INV:
        return f"encoder.layer.{layer[1]}.{_LAYER_INV[layer[2]]}.{param}"
    if key == "lm_head.decoder.bias":
        return "cls.predictions.bias"
    return f"{_TOP_INV[module]}.{param}"


def state_from_hf(sd: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """Rename a transformers BERT state dict to ours; initialise a missing pooler the head does not use."""
    out = {}
    for key, value in sd.items():
        key = key.removeprefix("bert.")
        if key not in _DROPPED:
            out[_hf_to_ours(key)] = value
    if config.head in ("pretraining", "mlm") and "embeddings.word_embeddings.weight" in out:
        out["lm_head.decoder.weight"] = out["embeddings.word_embeddings.weight"]  # tied
    if config.has_pooler and "pooler.dense.weight" not in out and config.head in _BARE_HEADS:
        # some sentence-transformers checkpoints leave out the pooler that BertModel builds; as transformers
        # does, start it from the initialisation (the embedding head never reads it)
        log.info("pooler.dense is not in the checkpoint: initialised as new (the %r head does not use it)",
                 config.head)
        h = config.hidden_size
        out["pooler.dense.weight"] = torch.randn(h, h) * config.initializer_range
        out["pooler.dense.bias"] = torch.zeros(h)
    return out


def state_to_hf(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Our state dict -> transformers' names (``bert.`` prefix for all but BertModel; the tied decoder left out)."""
    prefix = "" if model.config.head in _BARE_HEADS else "bert."
    out = {}
    for key, value in sd.items():
        if key == "lm_head.decoder.weight":
            continue  # transformers re-ties it to the word embeddings
        hf = _ours_to_hf(key)
        out[(prefix if hf.startswith(("embeddings.", "encoder.", "pooler.")) else "") + hf] = value
    return out


def extra_files(model: nn.Module) -> dict[str, str]:
    """An embedding model's sentence-transformers files, so that its pooling and normalisation travel with it."""
    return sentence_transformers_files(model) if model.config.head == "embedding" else {}


ADAPTER = HFAdapter("bert", "bert", config_from_hf, config_to_hf, state_from_hf, state_to_hf, extra_files)


# ---------------------------------------------------------------------------------------------- sentence-transformers


def sentence_transformers_files(model: nn.Module, *, max_seq_length: int = 256) -> dict[str, str]:
    """The files (relative path -> JSON text; a path ending in "/" is an empty folder) that make a saved embedding
    model a sentence-transformers one; ``save(model, dir, format="hf")`` writes them for every embedding model."""
    c = model.config
    if c.head != "embedding":
        raise ConfigError(f"a sentence-transformers directory needs head='embedding', this model has {c.head!r}")
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if c.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    pooling = {"word_embedding_dimension": c.hidden_size, "pooling_mode_cls_token": c.pooling == "cls",
               "pooling_mode_mean_tokens": c.pooling == "mean", "pooling_mode_max_tokens": False,
               "pooling_mode_mean_sqrt_len_tokens": False}
    st_config = {"max_seq_length": min(max_seq_length, c.max_position_embeddings), "do_lower_case": False}
    dump = lambda obj: json.dumps(obj, indent=2) + "\n"  # noqa: E731
    files = {"modules.json": dump(modules), "1_Pooling/config.json": dump(pooling),
             "sentence_bert_config.json": dump(st_config)}
    if c.normalize:
        files["2_Normalize/"] = ""  # a module without parameters: an empty folder, as sentence-transformers saves it
    return files


def save_sentence_transformers(model: nn.Module, directory: str | Path, *, tokenizer=None,
                               max_seq_length: int = 256) -> Path:
    """Save an embedding model as a sentence-transformers directory (HF weights + modules.json + pooling).

    ``tokenizer``: the tokenizer to write (sentence-transformers needs one); by default the one saved beside the
    model's source directory. ``max_seq_length``: the longest input sentence-transformers feeds the model.

    >>> save_sentence_transformers(bigmodels.load(minilm_dir), "out", tokenizer=tok)  # doctest: +SKIP
    """
    files = sentence_transformers_files(model, max_seq_length=max_seq_length)  # first: refuses other heads
    tokenizer = tokenizer if tokenizer is not None else source_tokenizer(model)
    directory = save_hf(model, directory)  # with modules.json, the pooling config and Normalize
    if tokenizer is not None:
        write_tokenizer(tokenizer, directory)
    atomic_write(directory / "sentence_bert_config.json",
                 lambda p: p.write_text(files["sentence_bert_config.json"], encoding="utf-8"))
    return directory
