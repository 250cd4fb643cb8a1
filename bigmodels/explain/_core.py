"""What every explanation method shares: the :class:`Explanation` record, the method registry, the model's
input prepared once (:class:`Subject`) and the function from that input to the target logits.

An explanation is of one input (an image, or one text) and one target class. The model is reached only through
the contract (``model_info(model).task``, ``kind_of(model)``): images go through ``forward``; text models are
attributed with respect to the output of their token-embedding module (the first ``nn.Embedding`` whose size is
the vocabulary), so the token ids themselves never need a gradient.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, DataError
from ..models._contract import kind_of, model_info

__all__ = ["Explanation", "Subject", "METHODS", "register_method", "require_captum", "embedding_module",
           "supports", "support_table"]


@dataclass
class Explanation:
    """Attributions of one input for one target class.

    ``attributions``: for an image the shape of the input (C, H, W), or (H, W) for maps that have no channels
    (Grad-CAM, attention rollout); for a text one value per token (T,). ``tokens`` / ``words`` and
    ``word_attributions`` (the sum over the pieces of each word) for a text; ``word_ids`` maps each token to
    its word (None for special tokens). ``predicted`` / ``target``: class indices (for a language model, token
    ids); ``score``: the target's probability. ``delta``: integrated gradients' completeness gap
    sum(attributions) - (f(x) - f(baseline)), ``relative_delta`` that gap over |f(x) - f(baseline)|.
    ``extras``: method-specific arrays (attention maps, rollout matrix, CAM at feature resolution).
    """

    method: str
    modality: str  # "image" | "text"
    inputs: torch.Tensor  # the model's input: a normalised image (C, H, W) or token ids (T,)
    attributions: torch.Tensor
    target: int
    predicted: int
    score: float
    settings: dict[str, Any] = field(default_factory=dict)
    target_label: str | None = None
    predicted_label: str | None = None
    tokens: list[str] | None = None
    word_ids: list[int | None] | None = None
    words: list[str] | None = None
    word_attributions: torch.Tensor | None = None
    delta: float | None = None
    relative_delta: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def heatmap(self) -> torch.Tensor:
        """An image's attributions as one (H, W) map (summed over channels); a text's per-token values."""
        a = self.attributions
        return a.sum(0) if self.modality == "image" and a.dim() == 3 else a

    def top_words(self, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` words (tokens when there are no words) with the largest attributions."""
        names, values = (self.words, self.word_attributions) if self.words else (self.tokens, self.attributions)
        if names is None or values is None:
            raise ConfigError(f"top_words: a {self.modality} explanation has no words; use heatmap()")
        order = values.argsort(descending=True)[:k].tolist()
        return [(names[i], float(values[i])) for i in order]

    def summary(self) -> dict[str, Any]:
        """A JSON-serialisable digest (no tensors but the word/token attributions as lists)."""
        out: dict[str, Any] = {"method": self.method, "modality": self.modality, "target": self.target,
                               "target_label": self.target_label, "predicted": self.predicted,
                               "predicted_label": self.predicted_label, "score": round(self.score, 6),
                               "settings": {k: v for k, v in self.settings.items() if _plain(v)}}
        if self.delta is not None:
            out["delta"], out["relative_delta"] = self.delta, self.relative_delta
        if self.words is not None and self.word_attributions is not None:
            out["words"] = [[w, round(float(a), 6)] for w, a in zip(self.words, self.word_attributions, strict=True)]
        elif self.tokens is not None:
            out["tokens"] = [[t, round(float(a), 6)] for t, a in zip(self.tokens, self.attributions, strict=True)]
        return out


def _plain(v: Any) -> bool:
    return v is None or isinstance(v, str | int | float | bool) or (
        isinstance(v, list | tuple) and all(isinstance(x, str | int | float) for x in v))


def require_captum() -> Any:
    """The captum package; a ConfigError naming the extra when it is not installed."""
    if importlib.util.find_spec("captum") is None:
        raise ConfigError('this explanation method needs captum: pip install "bigmodels[explain]"')
    import captum.attr

    return captum.attr


# ---------------------------------------------------------------------------------------------- the subject


def embedding_module(model: nn.Module) -> nn.Embedding:
    """The token-embedding module of a text model: ``get_input_embeddings()`` when the model has it, else the
    first ``nn.Embedding`` whose ``num_embeddings`` is the vocabulary size of its config."""
    getter = getattr(model, "get_input_embeddings", None)
    if callable(getter):
        return getter()
    cfg = model.config
    vocab = getattr(cfg, "vocab_size", None) or getattr(cfg, "src_vocab_size", None)
    for m in model.modules():
        if isinstance(m, nn.Embedding) and m.num_embeddings == vocab:
            return m
    raise ConfigError(f"{type(model).__name__} has no nn.Embedding of its vocabulary size {vocab}; text "
                      "attributions need the token-embedding module (give the family get_input_embeddings())")


@dataclass
class Subject:
    """One input prepared for a model: the batch of one the model takes, how to read the target logits from
    its output, and for texts the tokens, their words and the ids a 'blank' token takes (the baseline)."""

    model: nn.Module
    modality: str  # "image" | "text"
    task: str
    kind: str
    x: torch.Tensor  # (1, C, H, W) float or (1, T) int64
    position: int | None = None  # the token whose logits are explained (decoders, MLM, NER)
    tokens: list[str] | None = None
    word_ids: list[int | None] | None = None
    words: list[str] | None = None
    special: list[bool] | None = None
    blank_id: int = 0
    labels: list[str] | None = None
    tokenizer: Any = None

    def logits(self, out: Any) -> torch.Tensor:
        """The model's output -> the (B, C) logits the target indexes."""
        if isinstance(out, tuple | list):
            out = out[0]  # pretraining heads: (masked-LM logits, next-sentence logits)
        if out.dim() == 3:  # per-token outputs: the explained position
            out = out[:, self.position]
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The (B, C) target logits of a batch of inputs (images, or token ids for texts)."""
        if self.kind == "encoder_decoder":  # only attention applies; never reached by the gradient methods
            raise ConfigError("a translation model has no class logits to attribute; use method='attention'")
        return self.logits(self.model(x))

    def baseline(self) -> torch.Tensor:
        """The reference input: a zero image (the data mean after normalisation) or the text with every
        non-special token replaced by the blank token."""
        if self.modality == "image":
            return torch.zeros_like(self.x)
        keep = torch.tensor(self.special, device=self.x.device)[None]
        return torch.where(keep, self.x, torch.full_like(self.x, self.blank_id))

    def feature_mask(self, segments: int = 8) -> torch.Tensor:
        """The interpretable features of LIME, KernelSHAP and occlusion: a grid of ``segments`` x ``segments``
        squares shared by the channels of an image; the words of a text. A text's special tokens never leave the
        input (the baseline keeps them), so they are no players of their own, which would only add noise to a
        sampled estimate: each joins the feature of the nearest word before it (the first word for those in
        front). A text without words keeps one feature per token."""
        if self.modality == "image":
            _, c, h, w = self.x.shape
            rows = (torch.arange(h, device=self.x.device) * segments // h)[:, None]
            cols = (torch.arange(w, device=self.x.device) * segments // w)[None, :]
            return (rows * segments + cols).expand(1, c, h, w).contiguous()
        order = list(dict.fromkeys(w for w in self.word_ids if w is not None))  # words in order of appearance
        if not order:
            return torch.arange(len(self.word_ids), device=self.x.device)[None]
        index = {w: i for i, w in enumerate(order)}
        groups, current = [], 0
        for wid in self.word_ids:
            if wid is not None:
                current = index[wid]
            groups.append(current)
        return torch.tensor(groups, device=self.x.device)[None]

    def label(self, index: int) -> str | None:
        """The name of class ``index`` (the token, for a vocabulary-sized output), or None."""
        if self.labels and 0 <= index < len(self.labels):
            return self.labels[index]
        if self.tokenizer is not None and self.task in ("language_modeling", "masked_language_modeling"):
            return self.tokenizer.id_to_token(index)
        return None

    def check_target(self, target: int | None, logits: torch.Tensor) -> tuple[int, int]:
        """(target, predicted): the target defaults to the predicted class; out of range is a ConfigError."""
        n = logits.shape[-1]
        predicted = int(logits[0].argmax())
        if target is None:
            return predicted, predicted
        if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < n:
            raise ConfigError(f"target={target!r} is out of range: this model has {n} classes (0 .. {n - 1}); "
                              "give a class index in that range, or leave target=None for the predicted class")
        return target, predicted


def word_sums(values: torch.Tensor, word_ids: list[int | None]) -> torch.Tensor:
    """Per-token values (T,) -> per-word sums (W,) over the pieces of each word (special tokens dropped)."""
    n = max((w for w in word_ids if w is not None), default=-1) + 1
    out = torch.zeros(n, dtype=values.dtype)
    for v, w in zip(values.tolist(), word_ids, strict=True):
        if w is not None:
            out[w] += v
    return out


# ---------------------------------------------------------------------------------------------- registry

# method -> (function(subject, target, **settings) -> partial Explanation fields, which model kinds/families)
Method = Callable[..., dict[str, Any]]
METHODS: dict[str, Method] = {}
_APPLIES: dict[str, Callable[[nn.Module], str | None]] = {}


def register_method(name: str, applies: Callable[[nn.Module], str | None]) -> Callable[[Method], Method]:
    """Register ``fn(subject, target, **settings)`` as method ``name``; ``applies(model)`` says why the method
    does not apply to a model (None when it does)."""

    def deco(fn: Method) -> Method:
        METHODS[name] = fn
        _APPLIES[name] = applies
        return fn

    return deco


def why_not(method: str, model: nn.Module) -> str | None:
    """Why ``method`` does not apply to ``model`` (None when it does)."""
    return _APPLIES[method](model)


def supports(model: nn.Module) -> list[str]:
    """The methods that apply to ``model``."""
    return [m for m in METHODS if why_not(m, model) is None]


def has_class_logits(model: nn.Module) -> str | None:
    """None when the model's output has classes (or next tokens) to attribute; else why not."""
    task = model_info(model).task
    if task in ("sentence_embedding", "translation", "question_answering"):
        return (f"a {task} model has no class logits to attribute; fine-tune a classifier on it "
                "(reset_classifier) or use method='attention'")
    return None


def support_table(names: list[str] | None = None) -> list[dict[str, Any]]:
    """Which method applies to which registered family, as data (one row per family, built from its first
    tiny preset): ``[{"family", "model", "task", "saliency": True, ...}]``; ``names`` limits the presets."""
    from ..registry import list_models
    from ..testing import tiny_model

    rows: dict[str, dict[str, Any]] = {}
    for name in names or list_models():
        model = tiny_model(name)
        info = model_info(model)
        key = f"{info.family}/{info.task}"
        if key in rows:
            continue
        rows[key] = {"family": info.family, "model": name, "task": info.task, "kind": kind_of(model),
                     **{m: why_not(m, model) is None for m in METHODS}}
    return list(rows.values())


def check_length(model: nn.Module, n: int) -> None:
    """A DataError when a text of ``n`` tokens is longer than the model's context."""
    cfg = model.config
    limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "block_size", None)
    if isinstance(limit, int) and n > limit:
        raise DataError(f"the text has {n} tokens but this model takes at most {limit}; shorten the text "
                        f"(or tokenize with max_length={limit})")
