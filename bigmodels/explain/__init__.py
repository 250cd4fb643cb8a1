"""Explanations of any registered model: one verb, :func:`explain`, in the spirit of captum's ``attribute()``.

Methods (``METHODS``): ``saliency``, ``ig`` (integrated gradients, with its completeness gap), ``gradcam``
(CNN feature maps, ViT tokens), ``occlusion``, ``lime``, ``shap`` (KernelSHAP), ``attention`` (attention
rollout, Abnar & Zuidema 2020, with the raw maps). :func:`faithfulness` scores an explanation by deletion and
insertion against random orders (and captum's infidelity / sensitivity); :func:`write_report` renders
explanations as one self-contained HTML page. Activation analysis (:func:`activation_stats`,
:func:`layer_projections`, :func:`linear_probes`): what each layer computes over a labelled set of inputs.

>>> import torch
>>> from bigmodels.testing import tiny_model
>>> e = explain(tiny_model("cnn_small").eval(), torch.randn(1, 8, 8), method="ig")
>>> e.attributions.shape, e.relative_delta < 0.01
(torch.Size([1, 8, 8]), True)
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, DataError
from ..models._contract import kind_of, model_device, model_info
from . import attention, cam, gradients, perturbation  # noqa: F401 (each registers its methods)
from ._core import (
    METHODS,
    Explanation,
    Subject,
    check_length,
    has_class_logits,
    support_table,
    supports,
    why_not,
    word_sums,
)
from .activations import activation_report, activation_stats, layer_projections, linear_probes
from .agreement import _require_shap, agreement_with_shap
from .faithfulness import faithfulness, infidelity, rank_methods, sensitivity
from .report import write_report

# the order methods are listed and run in (``supports``, ``--method all``): gradients, then perturbation, attention
for _name in ("saliency", "ig", "gradcam", "occlusion", "lime", "shap", "attention"):
    METHODS[_name] = METHODS.pop(_name)

__all__ = ["explain", "explain_all", "Explanation", "METHODS", "supports", "support_table", "faithfulness",
           "rank_methods", "write_report", "prepare", "infidelity", "sensitivity", "activation_stats",
           "layer_projections", "linear_probes", "activation_report", "shap_agreement"]


def _tokenizer(tokenizer: Any) -> Any:
    if isinstance(tokenizer, str | Path):
        from ..io import load_tokenizer

        return load_tokenizer(tokenizer)
    return tokenizer


def _image(model: nn.Module, inputs: Any) -> torch.Tensor:
    """An image (file path, PIL image, uint8 (C, H, W) or a normalised float (C, H, W) / (1, C, H, W)) ->
    the normalised (1, C, H, W) batch the model takes."""
    if isinstance(inputs, torch.Tensor) and inputs.is_floating_point():
        x = inputs if inputs.dim() == 4 else inputs[None]
        if x.dim() != 4 or x.shape[0] != 1:
            raise DataError(f"explain takes one image: a float (C, H, W) or (1, C, H, W) tensor, got "
                            f"{tuple(inputs.shape)}; explain a batch one image at a time")
        return x
    from ..infer.pipelines import image_preprocessing, prepare_image

    prep = image_preprocessing(model, model_info(model).meta)
    return prep.transform(prepare_image(inputs, prep)[None]).float()


def _words(text: str, offsets: list[tuple[int, int]], word_ids: list[int | None]) -> list[str]:
    spans: dict[int, list[int]] = {}
    for (a, b), w in zip(offsets, word_ids, strict=True):
        if w is not None:
            spans.setdefault(w, [a, b])
            spans[w] = [min(spans[w][0], a), max(spans[w][1], b)]
    return [text[spans[w][0]:spans[w][1]] if w in spans else "" for w in range(max(spans, default=-1) + 1)]


def prepare(model: nn.Module, inputs: Any, tokenizer: Any = None, *, position: int | None = None,
            blank_id: int | None = None) -> Subject:
    """One input made ready for the explanation methods (see :class:`~bigmodels.explain._core.Subject`):
    an image, a text (with ``tokenizer``) or its token ids (T,) / (1, T)."""
    info, kind = model_info(model), kind_of(model)
    meta = info.meta or {}
    labels = next((list(map(str, meta[k])) for k in ("class_names", "label_list") if isinstance(meta.get(k), list)),
                  None)
    if kind == "vision":
        return Subject(model, "image", info.task, kind, _image(model, inputs), labels=labels)
    tokenizer = _tokenizer(tokenizer)
    if isinstance(inputs, str):
        if tokenizer is None:
            raise ConfigError("explaining a text needs its tokenizer: pass tokenizer= (a Tokenizer or the path of "
                              "a tokenizer.json), or pass the token ids")
        enc = tokenizer.encoding(inputs, truncation=False)
        check_length(model, len(enc.ids))
        ids, tokens = torch.tensor(enc.ids)[None], list(enc.tokens)
        special = [bool(m) for m in enc.special_tokens_mask]
        word_ids = [None if sp else w for w, sp in zip(enc.word_ids, special, strict=True)]
        words = _words(inputs, list(enc.offsets), word_ids)
    else:
        ids = torch.as_tensor(inputs)
        ids = ids[None] if ids.dim() == 1 else ids
        if ids.dim() != 2 or ids.shape[0] != 1 or ids.is_floating_point():
            raise DataError(f"explain takes one text: a string, or token ids (T,) / (1, T), got "
                            f"{tuple(ids.shape)} {ids.dtype}; explain a batch one text at a time")
        check_length(model, ids.shape[1])
        specials = {t for t in (getattr(tokenizer, n, None) for n in ("cls_id", "sep_id", "bos_id", "eos_id"))
                    if t is not None}
        tokens = [tokenizer.id_to_token(int(i)) if tokenizer is not None else str(int(i)) for i in ids[0]]
        special = [int(i) in specials for i in ids[0]]
        word_ids = [None if sp else sum(not x for x in special[:n]) for n, sp in enumerate(special)]
        words = None
    device = model_device(model)
    ids = ids.to(device=device, dtype=torch.int64)
    vocab = getattr(model.config, "vocab_size", None) or getattr(model.config, "src_vocab_size", None)
    if vocab and int(ids.max()) >= vocab:
        raise DataError(f"token id {int(ids.max())} is outside the model's vocabulary of {vocab}; use the model's "
                        "own tokenizer")
    if blank_id is None:
        blank_id = next((t for t in (getattr(tokenizer, "pad_id", None), getattr(tokenizer, "unk_id", None))
                         if t is not None), 0)
    if position is None and info.task == "language_modeling":
        position = ids.shape[1] - 1  # next-token attributions: the last position's prediction
    if position is None and info.task == "masked_language_modeling":
        mask_id = getattr(tokenizer, "mask_id", None)
        found = (ids[0] == mask_id).nonzero() if mask_id is not None else []
        if not len(found):
            raise ConfigError("a masked-LM explanation needs the position to explain: put a mask token in the text "
                              "(with its tokenizer) or pass position=")
        position = int(found[0])
    if position is None and info.task == "token_classification":
        raise ConfigError("a token classifier labels every token: pass position= (the token to explain)")
    if position is not None and not -ids.shape[1] <= position < ids.shape[1]:
        raise ConfigError(f"position={position} is outside the text of {ids.shape[1]} tokens")
    return Subject(model, "text", info.task, kind, ids, position=position, tokens=tokens, word_ids=word_ids,
                   words=words, special=special, blank_id=blank_id, labels=labels, tokenizer=tokenizer)


def _check_settings(method: str, settings: dict[str, Any]) -> None:
    params = list(inspect.signature(METHODS[method]).parameters.values())[2:]
    allowed = [p.name for p in params]
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise ConfigError(f"method {method!r} takes no setting {', '.join(unknown)}; its settings are "
                          f"{', '.join(allowed) or 'none'}")


def explain(model: nn.Module, inputs: Any, method: str = "ig", target: int | None = None, tokenizer: Any = None,
            *, position: int | None = None, blank_id: int | None = None, **settings: Any) -> Explanation:
    """Explain the model's output for one input: attributions aligned to the pixels (images) or to the tokens
    and words (texts), for class ``target`` (default: the predicted class; for a language model the next
    token at ``position``, default the last).

    ``inputs``: an image (file path, PIL image, uint8 (C, H, W), or a normalised float (C, H, W)), a text (with
    ``tokenizer``) or token ids (T,). ``settings`` go to the method (``steps`` for ``ig``, ``samples`` for
    ``lime``/``shap``, ``window`` for ``occlusion``, ...). The model's train/eval mode is restored after.

    >>> import torch
    >>> from bigmodels.testing import tiny_model
    >>> e = explain(tiny_model("bert_mini", head="sequence_classification", num_labels=2), torch.arange(1, 9),
    ...             method="saliency", target=1)
    >>> e.attributions.shape, e.target
    (torch.Size([8]), 1)
    """
    if method not in METHODS:
        raise ConfigError(f"unknown explanation method {method!r}; choose one of {', '.join(METHODS)}")
    reason = why_not(method, model)
    if reason is not None:
        raise ConfigError(f"method {method!r} does not apply to {model_info(model).name}: {reason}; methods "
                          f"that do: {', '.join(supports(model)) or 'none'}")
    _check_settings(method, settings)
    was_training = model.training
    model.eval()
    try:
        s = prepare(model, inputs, tokenizer, position=position, blank_id=blank_id)
        with torch.no_grad():
            logits = s.forward(s.x) if has_class_logits(model) is None else None
        if logits is None:
            tgt = pred = -1
            score = float("nan")
        else:
            tgt, pred = s.check_target(target, logits)
            score = float(logits.float().softmax(-1)[0, tgt])
        out = METHODS[method](s, tgt, **settings)
    finally:
        model.train(was_training)
    attributions = out.pop("attributions").detach().float().cpu()
    used = {"position": s.position, **({"blank_id": s.blank_id} if s.modality == "text" else {}), **settings,
            **out.pop("settings", {})}
    e = Explanation(method=method, modality=s.modality, inputs=s.x[0].detach().cpu(), attributions=attributions,
                    target=tgt, predicted=pred, score=score, settings=used,
                    target_label=s.label(tgt), predicted_label=s.label(pred), tokens=s.tokens, word_ids=s.word_ids,
                    words=s.words, **out)
    if s.modality == "text" and attributions.dim() == 1 and any(w is not None for w in s.word_ids):
        e.word_attributions = word_sums(attributions, s.word_ids)
        if e.words is None:
            e.words = [t for t, w in zip(s.tokens, s.word_ids, strict=True) if w is not None]
    return e


def explain_all(model: nn.Module, inputs: Any, methods: list[str] | None = None, target: int | None = None,
                tokenizer: Any = None, **kwargs: Any) -> list[Explanation]:
    """:func:`explain` with each of ``methods`` (default: every method that applies to the model)."""
    return [explain(model, inputs, m, target, tokenizer, **kwargs) for m in (methods or supports(model))]


def shap_agreement(model: nn.Module, inputs: Any, target: int | None = None, tokenizer: Any = None, *,
                   samples: int = 1024, segments: int = 8, exact_features: int = 12,
                   shap_samples: int = 4096) -> dict[str, Any]:
    """The library's KernelSHAP (``explain(..., "shap", samples=samples)``) and shap's KernelExplainer on one
    input (its exact Shapley values up to ``exact_features`` features, else ``shap_samples`` coalitions):
    ``{"spearman", "ours", "shap" (one value per feature, as numpy arrays), "features", "exact", "target"}``.
    ``spearman`` is the rank correlation of the two over the features either one moves. Needs the ``shap`` extra.

    >>> import torch
    >>> from bigmodels.testing import tiny_model
    >>> out = shap_agreement(tiny_model("cnn_small").eval(), torch.randn(1, 8, 8), target=3, segments=3)
    >>> out["features"], out["exact"]
    (9, True)
    """
    _require_shap()  # before the explanation's work
    e = explain(model, inputs, "shap", target, tokenizer, samples=samples, segments=segments)
    return agreement_with_shap(e, prepare(model, inputs, tokenizer), segments=segments,
                               exact_features=exact_features, shap_samples=shap_samples)
