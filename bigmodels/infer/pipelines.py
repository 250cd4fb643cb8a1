"""Pipelines: a task name and a model in, a callable out that turns raw inputs into plain Python results.

``pipeline(task, model)`` is the one-call API of Hugging Face ``transformers``: it loads the model (a registry
name, a saved directory or training run, a Hugging Face directory or hub name, a registry name with a
torchvision state dict as ``weights=``, or an ``nn.Module``), finds its tokenizer, and returns an object that
tokenizes or preprocesses, batches, runs the model without gradients and postprocesses into the shapes
``transformers`` gives::

    >>> import bigmodels
    >>> from bigmodels.data.tokenizers import Tokenizer
    >>> tok = Tokenizer.train_chars("hello world")
    >>> lm = bigmodels.create_model("gpt_mini", vocab_size=tok.vocab_size)
    >>> generate = bigmodels.pipeline("text-generation", lm, tokenizer=tok, max_new_tokens=5, seed=0)
    >>> len(generate("hello")[0]["generated_text"])
    10

=======================  =====================================================  ================================
task                     input -> result (one input; a list gives a list)       models
=======================  =====================================================  ================================
text-generation          prompt -> [{"generated_text"}]                          language models (GPT, char RNNs)
fill-mask                text with the mask token -> [{"sequence", "token",      BERT with a masked-LM head
                         "token_str", "score"}] best first
text-classification      text -> [{"label", "score"}]                            sequence classifiers
token-classification     text -> [{"entity_group", "score", "word", "start",     token classifiers (NER)
                         "end"}], words grouped by their B-/I- tags
feature-extraction       text -> a sentence vector (H,) (embedding models), or   BERT
                         the token vectors (1, T, H) as transformers gives
sentence-similarity      (source, [sentences]) -> [cosine, ...]                  sentence-embedding models
translation              text -> [{"translation_text"}]                          encoder-decoders
image-classification     image file, PIL image or uint8 (C, H, W) tensor ->      image classifiers
                         [{"label", "score"}] best first
=======================  =====================================================  ================================

Options (``max_new_tokens``, ``top_k``, ``num_beams``, ...) given to ``pipeline`` are the defaults of every call;
a call can override them: ``generate("Hi", max_new_tokens=20)``. An option the task does not have, or one the
model cannot honour, is an error rather than ignored.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..data.folder import read_image
from ..data.tokenizers import Tokenizer
from ..data.transforms import image_transforms
from ..errors import ConfigError, DataError
from ..models._contract import inference, model_device
from ..nn.attention import pack_qkv_

__all__ = [
    "pipeline", "supported_tasks", "model_task", "TASKS", "BACKENDS", "Pipeline", "TextGenerationPipeline",
    "FillMaskPipeline", "TextClassificationPipeline", "TokenClassificationPipeline", "FeatureExtractionPipeline",
    "SentenceSimilarityPipeline", "TranslationPipeline", "ImageClassificationPipeline", "ImagePreprocessing",
    "image_preprocessing", "prepare_image",
]

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime")
_ALIASES = {"ner": "token-classification", "sentiment-analysis": "text-classification"}
# registry task -> the pipeline tasks a model of that task can run (feature-extraction where it has an encoder)
_PIPELINES_OF = {
    "language_modeling": ("text-generation",),
    "masked_language_modeling": ("fill-mask", "feature-extraction"),
    "sentence_embedding": ("feature-extraction", "sentence-similarity"),
    "sequence_classification": ("text-classification", "feature-extraction"),
    "token_classification": ("token-classification", "feature-extraction"),
    "question_answering": ("feature-extraction",),
    "translation": ("translation",),
    "image_classification": ("image-classification",),
}


# ---------------------------------------------------------------------------------------------- the model


def model_task(model: nn.Module) -> str:
    """The registry task of ``model`` (its :class:`~bigmodels.models._contract.ModelInfo`, else ``model.task``)."""
    from ..models._contract import model_info

    try:
        return model_info(model).task
    except ConfigError:
        task = getattr(model, "task", None)
        if isinstance(task, str):
            return task
        raise


def _sentence_vectors(model: nn.Module) -> bool:
    """Whether ``model`` gives one vector per text (a sentence-embedding head) rather than token vectors."""
    return getattr(getattr(model, "config", None), "head", None) == "embedding"


def supported_tasks(model: nn.Module) -> tuple[str, ...]:
    """The pipeline tasks ``model`` can run, e.g. ``("fill-mask", "feature-extraction")`` for BERT's MLM head."""
    tasks = _PIPELINES_OF.get(model_task(model), ())
    if not _sentence_vectors(model):
        tasks = tuple(t for t in tasks if t != "sentence-similarity")
        if not hasattr(model, "encode_ids"):  # token vectors come from the encoder
            tasks = tuple(t for t in tasks if t != "feature-extraction")
    return tasks


def _meta(model: nn.Module) -> dict[str, Any]:
    """What a stage may need to know about ``model``: its ModelInfo's meta (and path)."""
    meta: dict[str, Any] = {}
    info = getattr(model, "info", None)
    meta.update(getattr(info, "meta", None) or {})
    if getattr(info, "path", None) and "path" not in meta:
        meta["path"] = info.path
    return meta


def _hf_record(model: nn.Module, name: str) -> dict[str, Any]:
    """A JSON file beside a Hugging Face model (config.json, preprocessor_config.json); {} when there is none."""
    path = _meta(model).get("path")
    file = Path(path) / name if path else None
    if file is None or not file.is_file():
        return {}
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def _labels(model: nn.Module, n: int, default: str = "LABEL_{}") -> list[str]:
    """Class names: the saved ones (class_names, label_list), a Hugging Face id2label, else ``default``."""
    meta = _meta(model)
    for key in ("class_names", "label_list"):
        names = meta.get(key)
        if isinstance(names, list) and len(names) == n:
            return [str(x) for x in names]
    id2label = _hf_record(model, "config.json").get("id2label")
    if isinstance(id2label, dict) and len(id2label) == n:
        try:
            return [str(id2label[str(i)]) for i in range(n)]
        except KeyError:
            pass
    return [default.format(i) for i in range(n)]


def _load(model: nn.Module | str | os.PathLike, weights: str | os.PathLike | None) -> tuple[nn.Module, Path | None]:
    """(the module, the directory it was read from or None)."""
    from ..io import load, resolve_checkpoint
    from ..registry import create_model, list_models

    if isinstance(model, nn.Module):
        if weights is not None:
            raise ConfigError("weights= loads a state dict into a registered architecture named by model=; "
                              "an nn.Module already has its weights, so drop weights=")
        return model, None
    if not isinstance(model, str | os.PathLike):
        raise ConfigError(f"model={model!r} is not a model: pass a registry name, a saved directory or training "
                          "run, a Hugging Face directory or hub name, or an nn.Module")
    text = str(model)
    registered = text in list_models() and not Path(text).exists()
    if weights is not None:
        if not registered:
            raise ConfigError(f"weights={str(weights)!r} needs model= to name the registered architecture it "
                              f"belongs to (e.g. 'resnet50'); {text!r} is not one (see `bigmodels models`)")
        return load(weights, model=text), None
    if registered:
        log.warning("pipeline: %s is built with fresh, untrained weights; pass weights=FILE (a torchvision state "
                    "dict) or a saved model directory for trained ones", text)
        return create_model(text).eval(), None
    from ..interop.torchvision import STATE_DICT_SUFFIXES

    if Path(text).is_file() and Path(text).suffix in STATE_DICT_SUFFIXES and Path(text).name != "model.safetensors":
        raise ConfigError(f"{text} is a plain state dict, which names no architecture; pass the architecture as "
                          f"model and the file as weights: pipeline(task, 'resnet50', weights={text!r})")
    if Path(text).suffix == ".onnx" or (Path(text) / "model.onnx").is_file():  # an export: io runs it in ONNX Runtime
        return load(text), Path(text) if Path(text).is_dir() else Path(text).parent
    directory = resolve_checkpoint(text)
    return load(directory), directory


def _find_tokenizer(tokenizer, model: nn.Module, directory: Path | None) -> Tokenizer | None:
    """The tokenizer given (a Tokenizer, CharTokenizer, file or directory), else the one saved with the model."""
    if tokenizer is None:
        where = directory or _meta(model).get("path")
        if where is None or not Path(where).is_dir():
            return None
        where = Path(where)
        if not ((where / "tokenizer.json").is_file() or (where / "vocab.txt").is_file()):
            return None
        tokenizer = where
    if isinstance(tokenizer, str | os.PathLike):  # a tokenizer path, or a model directory, run or hub name
        from ..io import load_tokenizer

        tokenizer = load_tokenizer(tokenizer)
    if not isinstance(tokenizer, Tokenizer):
        raise ConfigError(f"tokenizer={type(tokenizer).__name__} is not a bigmodels Tokenizer; pass one "
                          "(bigmodels.data.tokenizers.Tokenizer / load_tokenizer) or the path of a tokenizer.json")
    return tokenizer


def _positions(model: nn.Module, tokenizer: Tokenizer | None) -> int | None:
    """The longest token sequence the model (and its tokenizer) takes; None when unlimited."""
    cfg = getattr(model, "config", None)
    limits = [getattr(cfg, "max_position_embeddings", None), getattr(cfg, "block_size", None),
              getattr(tokenizer, "model_max_length", None)]
    limits = [n for n in limits if isinstance(n, int) and n > 0]
    return min(limits) if limits else None


def _texts(inputs: Any, task: str) -> tuple[bool, list[str]]:
    """(whether one text was given, the texts as a list)."""
    if isinstance(inputs, str):
        return True, [inputs]
    if isinstance(inputs, list | tuple) and all(isinstance(t, str) for t in inputs):
        return False, list(inputs)
    raise DataError(f"{task} takes a text or a list of texts, got {type(inputs).__name__} {inputs!r:.60}")


def _accepts(model: nn.Module, name: str) -> bool:
    return name in inspect.signature(model.forward).parameters


# ---------------------------------------------------------------------------------------------- the base class


class Pipeline:
    """A model with its tokenizer and options: ``pipe(inputs, **options)`` -> plain Python results.

    ``preprocess(item, **options)`` prepares one input (raising :class:`DataError` for a bad one) and
    ``run(prepared, **options)`` batches prepared inputs through the model and postprocesses each: calling the
    pipeline is both, and a caller that wants to skip bad inputs (the CLI's ``predict``) calls them in turn.
    """

    task: ClassVar[str]
    defaults: ClassVar[dict[str, Any]] = {}  # option -> default
    default_batch_size: ClassVar[int] = 32
    needs_tokenizer: ClassVar[bool] = True

    def __init__(self, model: nn.Module, tokenizer: Tokenizer | None = None, *, batch_size: int | None = None,
                 device: str | torch.device | None = None, **options: Any) -> None:
        tasks = supported_tasks(model)
        if self.task not in tasks:
            what = f"a {model_task(model)} model ({type(model).__name__})"
            raise ConfigError(f"task {self.task!r} does not fit {what}: it runs "
                              f"{', '.join(repr(t) for t in tasks) or 'no pipeline task yet'}; use one of those")
        if self.needs_tokenizer and tokenizer is None:
            raise ConfigError(f"{self.task} needs the model's tokenizer and none was found beside the model (no "
                              "tokenizer.json or vocab.txt); save the model with its tokenizer (bigmodels.save(model, "
                              "dir, tokenizer=tok)) or pass tokenizer= (a Tokenizer, or its file or directory)")
        batch_size = self.default_batch_size if batch_size is None else batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size={batch_size!r} must be a whole number >= 1")
        if device is not None:
            model.to(device)
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.options = self._options(options)

    def _options(self, given: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(given) - set(self.defaults))
        if unknown:
            raise ConfigError(f"{self.task} has no option {', '.join(unknown)}; its options are "
                              f"{', '.join(self.defaults) or 'none'}")
        options = {**getattr(self, "options", self.defaults), **given}
        self._check(options)
        return options

    def _check(self, options: dict[str, Any]) -> None:
        """Raise ConfigError for an option value out of range (or one the model cannot honour)."""

    def _top_k(self, options: dict[str, Any]) -> None:
        k = options["top_k"]
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"top_k={k!r} must be a whole number >= 1")

    def _inputs(self, inputs: Any) -> tuple[bool, list]:
        return _texts(inputs, self.task)

    def preprocess(self, item: Any, **options: Any) -> Any:
        """One input, ready for :meth:`run`."""
        return item

    def run(self, prepared: Sequence[Any], **options: Any) -> list:
        """The result of each prepared input, in order."""
        raise NotImplementedError

    def _single(self, result: Any) -> Any:
        """The result for one (not listed) input: what transformers returns for it."""
        return result

    def __call__(self, inputs: Any, **options: Any) -> Any:
        opts = self._options(options)
        single, items = self._inputs(inputs)
        results = self.run([self.preprocess(x, **opts) for x in items], **opts)
        return self._single(results[0]) if single else results

    def _batches(self, lengths: Sequence[int], batch_size: int | None = None) -> Iterator[list[int]]:
        """Indices in batches of ``batch_size`` (default the pipeline's), longest first, so a batch pads little
        (a stable sort: equal lengths keep their order)."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        size = batch_size or self.batch_size
        for start in range(0, len(order), size):
            yield order[start:start + size]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(model={type(self.model).__name__}, batch_size={self.batch_size}, "
                f"options={self.options})")


class _EncoderPipeline(Pipeline):
    """Texts through a (BERT-style) encoder: one Encoding per text, right-padded batches, longest first."""

    def _max_length(self, options: dict[str, Any]) -> int | None:
        limit = _positions(self.model, self.tokenizer)
        n = options.get("max_length") or limit
        if limit is not None and n > limit:
            raise ConfigError(f"max_length={n} exceeds the model's {limit} positions; use max_length <= {limit}")
        return n

    def _check(self, options: dict[str, Any]) -> None:
        n = options.get("max_length")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 3):
            raise ConfigError(f"max_length={n!r} must be a whole number >= 3 (room for text and [CLS] [SEP])")
        if "top_k" in options:
            self._top_k(options)

    def preprocess(self, item: str, **options: Any):
        return self.tokenizer.encoding(item, max_length=self._max_length({**self.options, **options}))

    def _forward(self, encodings: Sequence[Any], fn=None) -> Iterator[tuple[int, torch.Tensor, int]]:
        """(index, output row, token count) per encoding; ``fn(ids, mask, types)`` defaults to the model."""
        # a model that takes no attention mask cannot skip padding: one text at a time
        batch_size = self.batch_size if fn is not None or _accepts(self.model, "attention_mask") else 1
        fn = fn or self._call_model
        device = model_device(self.model)
        pad = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0
        lengths = [len(e.ids) for e in encodings]
        with inference(self.model):
            for rows in self._batches(lengths, batch_size):
                T = lengths[rows[0]]
                ids = torch.tensor([encodings[i].ids + [pad] * (T - lengths[i]) for i in rows], device=device)
                types = torch.tensor([encodings[i].type_ids + [0] * (T - lengths[i]) for i in rows], device=device)
                mask = torch.tensor([[1] * lengths[i] + [0] * (T - lengths[i]) for i in rows], device=device)
                out = fn(ids, mask, types)
                for row, i in enumerate(rows):
                    yield i, out[row].float().cpu(), lengths[i]

    def _call_model(self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        kwargs = {}
        if _accepts(self.model, "attention_mask"):
            kwargs["attention_mask"] = mask
        if _accepts(self.model, "token_type_ids"):
            kwargs["token_type_ids"] = types
        out = self.model(ids, **kwargs)
        return out[0] if isinstance(out, tuple) else out  # BERT pretraining: (MLM logits, NSP logits)


# ---------------------------------------------------------------------------------------------- text generation


class TextGenerationPipeline(Pipeline):
    """Continue prompts: ``[{"generated_text": prompt + continuation}]`` per prompt.

    Options: ``max_new_tokens`` (50), ``temperature`` (1.0; 0 is greedy), ``top_k``, ``top_p``,
    ``repetition_penalty`` (1.0), ``stop`` (a string or list of strings that ends a continuation, kept),
    ``seed`` (each batch starts from it), ``return_full_text`` (True). A continuation also ends at the
    tokenizer's end-of-text token (left out of the text). Decoding is :func:`bigmodels.infer.generate.generate`,
    for Transformer and recurrent language models alike. The default batch size is 1, so a seed gives a prompt
    the same continuation whichever prompts come with it; with ``batch_size`` > 1 prompts are left-padded and
    decoded together (greedy decoding gives the same text either way). Greedy decoding (temperature 0, no
    repetition penalty) of a language model on the CPU picks each token through a float16 screen of its output layer
    (:class:`~bigmodels.infer.generate.Decoder` with ``greedy_screen=True``: the same tokens as the full float32
    product, which it reads only for the few candidates the screen leaves; 1.13-1.33x the new tokens per second of
    GPT-2 124M on 2 cores of an AMD EPYC, ``benchmarks/serve_prepared.py``). The pipeline builds the screen at
    its first greedy call (0.27-0.36 s and +77 MB for GPT-2) and keeps it for the next ones, as ``bigmodels serve``
    does.

    >>> pipe = pipeline("text-generation", "runs/gpt", max_new_tokens=20)  # doctest: +SKIP
    >>> pipe("To be")  # doctest: +SKIP
    [{'generated_text': 'To be, or not to be: ...'}]
    """

    task = "text-generation"
    defaults = {"max_new_tokens": 50, "temperature": 1.0, "top_k": None, "top_p": None, "repetition_penalty": 1.0,
                "stop": None, "seed": None, "return_full_text": True}
    default_batch_size = 1

    def _decoder(self):
        """The :class:`~bigmodels.infer.generate.Decoder` this pipeline's calls share (its greedy screen, built on
        first use, applies on the CPU only), made again if ``self.model`` was replaced."""
        from .generate import Decoder

        decoder = self.__dict__.get("_shared_decoder")
        if decoder is None or decoder.model is not self.model:
            decoder = self._shared_decoder = Decoder(self.model, greedy_screen=True)
        return decoder

    def _check(self, o: dict[str, Any]) -> None:
        from .generate import GenerationConfig

        stop = o["stop"]
        if not (stop is None or isinstance(stop, str) and stop or isinstance(stop, list | tuple) and stop
                and all(isinstance(s, str) and s for s in stop)):
            raise ConfigError(f"stop={stop!r} must be a non-empty string or a list of them")
        if not isinstance(o["return_full_text"], bool):
            raise ConfigError(f"return_full_text={o['return_full_text']!r} must be True or False")
        GenerationConfig(**self._decoding(o, seeded=False))  # checks every decoding option now, not at the call

    def _stops(self, o: dict[str, Any]) -> tuple[str, ...]:
        stop = o["stop"]
        return () if not stop else (stop,) if isinstance(stop, str) else tuple(stop)

    def _decoding(self, o: dict[str, Any], seeded: bool = True) -> dict[str, Any]:
        """The decoding options (fields of :class:`~bigmodels.infer.generate.GenerationConfig`) for options ``o``;
        ``seed`` as a fresh generator (a whole number passes the config's check without one)."""
        tok = self.tokenizer
        seed = o["seed"]
        if seeded and seed is not None and not isinstance(seed, torch.Generator):
            seed = torch.Generator(device=model_device(self.model)).manual_seed(seed)
        return {"max_new_tokens": o["max_new_tokens"], "temperature": o["temperature"], "top_k": o["top_k"],
                "top_p": o["top_p"], "repetition_penalty": o["repetition_penalty"], "eos_token_id": tok.eos_id,
                "pad_token_id": tok.pad_id if tok.pad_id is not None else tok.eos_id if tok.eos_id is not None else 0,
                "stop_strings": self._stops(o), "seed": seed}

    def preprocess(self, item: str, **options: Any) -> list[int]:
        if not item:
            raise DataError("the prompt is empty; give some text to continue, e.g. 'To be'")
        return self.tokenizer.encode(item, add_special_tokens=False, truncation=False, unknown="error")

    def _cut(self, new: list[int], o: dict[str, Any]) -> list[int]:
        """A row's new tokens up to its first end-of-text (dropped) or stop string (kept): what a row of a batch
        generates after it ended is padding."""
        eos = self.tokenizer.eos_id
        if eos is not None and eos in new:
            new = new[:new.index(eos)]
        stops = self._stops(o)
        if stops:
            for k in range(1, len(new) + 1):
                if any(s in self.tokenizer.decode(new[:k]) for s in stops):
                    return new[:k]
        return new

    def run(self, prepared: Sequence[list[int]], **options: Any) -> list[list[dict[str, str]]]:
        from .generate import generate

        o = self._options(options)
        out: list[list[int]] = [[] for _ in prepared]
        with inference(self.model):
            for start in range(0, len(prepared), self.batch_size):  # in the given order: a seed's draws follow it
                rows = list(range(start, min(start + self.batch_size, len(prepared))))
                ids = generate(self.model, [prepared[i] for i in rows], decode=self.tokenizer.decode,
                               decoder=self._decoder(), **self._decoding(o))  # (B, T + new), left-padded
                T = max(len(prepared[i]) for i in rows)
                for r, i in enumerate(rows):
                    out[i] = ids[r, T:].tolist()
        results = []
        for ids, new in zip(prepared, out, strict=True):
            text = self.tokenizer.decode(self._cut(new, o))
            results.append([{"generated_text": self.tokenizer.decode(ids) + text if o["return_full_text"] else text}])
        return results

    def stream(self, prompt: str, **options: Any) -> Iterator[str]:
        """The continuation of one prompt (without the prompt), piece by piece as it is decoded. The prompt and
        the options are checked before the first piece.

        >>> for piece in pipe.stream("To be", max_new_tokens=20):  # doctest: +SKIP
        ...     print(piece, end="", flush=True)
        """
        from .generate import stream

        o = self._options(options)
        if not isinstance(prompt, str):
            raise DataError(f"stream takes one prompt (a text), got {type(prompt).__name__}")
        steps = stream(self.model, [self.preprocess(prompt)], decode=self.tokenizer.decode, decoder=self._decoder(),
                       **self._decoding(o))
        return self._pieces(steps, o)

    def _pieces(self, steps: Iterator[torch.Tensor], o: dict[str, Any]) -> Iterator[str]:
        new: list[int] = []
        shown = ""
        for token in steps:
            new.append(int(token[0]))
            text = self.tokenizer.decode(self._cut(new, o))  # the whole continuation: BPE pieces join up
            if text.endswith("\ufffd"):  # a character split between byte-level tokens: wait for the rest
                continue
            if text.startswith(shown) and len(text) > len(shown):
                yield text[len(shown):]
                shown = text
        text = self.tokenizer.decode(self._cut(new, o))
        if text.startswith(shown) and len(text) > len(shown):
            yield text[len(shown):]


# ---------------------------------------------------------------------------------------------- encoders


class FillMaskPipeline(_EncoderPipeline):
    """Fill the mask token: the ``top_k`` (5) likeliest tokens, best first, as
    ``{"sequence", "token", "token_str", "score"}``; a text with several masks gives one such list per mask.

    >>> fill = pipeline("fill-mask", "path/to/bert")  # doctest: +SKIP
    >>> fill("Paris is the [MASK] of France.")[0]["token_str"]  # doctest: +SKIP
    'capital'
    """

    task = "fill-mask"
    defaults = {"top_k": 5, "max_length": None}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.tokenizer.mask_id is None:
            raise ConfigError(f"fill-mask needs a tokenizer with a mask token; {self.tokenizer!r} has none")

    def preprocess(self, item: str, **options: Any):
        enc = super().preprocess(item, **options)
        if self.tokenizer.mask_id not in enc.ids:
            mask = self.tokenizer.special_tokens["mask"]
            raise DataError(f"no {mask} in {item!r:.80} (or it was cut off by max_length); put {mask} where the "
                            "missing word goes")
        return enc

    def run(self, prepared: Sequence[Any], **options: Any) -> list:
        o = self._options(options)
        mask_id = self.tokenizer.mask_id
        results: list = [None] * len(prepared)
        for i, logits, n in self._forward(prepared):  # logits (T, V)
            ids = prepared[i].ids
            per_mask = []
            for pos in (p for p, t in enumerate(ids) if t == mask_id):
                probs = logits[pos].softmax(-1)
                top = probs.topk(min(o["top_k"], probs.numel()))
                per_mask.append([{"score": p, "token": t, "token_str": self.tokenizer.decode([t]),
                                  "sequence": self.tokenizer.decode(ids[:pos] + [t] + ids[pos + 1:n])}
                                 for p, t in zip(top.values.tolist(), top.indices.tolist(), strict=True)])
            results[i] = per_mask[0] if len(per_mask) == 1 else per_mask
        return results


class TextClassificationPipeline(_EncoderPipeline):
    """Classify texts: ``[{"label", "score"}]`` (the best class), or the ``top_k`` best; softmax over the
    classes (a sigmoid for a single output). Labels are the model's saved class names, else ``LABEL_i``.

    >>> classify = pipeline("text-classification", "runs/sst2")  # doctest: +SKIP
    >>> classify("A gripping, funny film.")  # doctest: +SKIP
    [{'label': 'positive', 'score': 0.97}]
    """

    task = "text-classification"
    defaults = {"top_k": 1, "max_length": None}

    def run(self, prepared: Sequence[Any], **options: Any) -> list:
        o = self._options(options)
        results: list = [None] * len(prepared)
        names = None
        for i, logits, _ in self._forward(prepared):  # (C,)
            probs = logits.sigmoid() if logits.numel() == 1 else logits.softmax(-1)
            names = names or _labels(self.model, probs.numel())
            top = probs.topk(min(o["top_k"], probs.numel()))
            ranked = [{"label": names[c], "score": p} for p, c in zip(top.values.tolist(), top.indices.tolist(),
                                                                       strict=True)]
            results[i] = ranked[0] if o["top_k"] == 1 else ranked
        return results

    def _single(self, result: Any) -> Any:
        return [result] if isinstance(result, dict) else result


def _tag(label: str) -> tuple[str, str]:
    """("B" | "I", entity type) of an IOB tag, as transformers reads it: a bare label is inside its type."""
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


class TokenClassificationPipeline(_EncoderPipeline):
    """Named entities: ``[{"entity_group", "score", "word", "start", "end"}]`` per text.

    Each word takes the label of its first sub-token (as the model was trained); consecutive words of one
    type (``B-PER I-PER``) form one entity, a ``B-`` starts a new one, and ``O`` words are left out, as
    transformers' ``aggregation_strategy="first"`` does. ``score`` is the mean of the words' probabilities;
    ``start`` / ``end`` are character offsets in the text and ``word`` is ``text[start:end]``.

    >>> ner = pipeline("token-classification", "runs/conll")  # doctest: +SKIP
    >>> ner("EU rejects German call")  # doctest: +SKIP
    [{'entity_group': 'ORG', 'score': 0.99, 'word': 'EU', 'start': 0, 'end': 2}, ...]
    """

    task = "token-classification"
    defaults = {"ignore_labels": ("O",), "max_length": None}

    def preprocess(self, item: str, **options: Any):
        return item, super().preprocess(item, **options)

    def run(self, prepared: Sequence[Any], **options: Any) -> list:
        o = self._options(options)
        results: list = [None] * len(prepared)
        names = None
        for i, logits, _ in self._forward([enc for _, enc in prepared]):  # (T, C)
            text, enc = prepared[i]
            probs = logits.softmax(-1)
            names = names or _labels(self.model, probs.size(-1))
            words: dict[int, list] = {}  # word -> [label, score, start, end]
            for t, word in enumerate(enc.word_ids):
                if word is None:
                    continue
                start, end = enc.offsets[t]
                if word not in words:  # its first sub-token decides
                    p, c = probs[t].max(-1)
                    words[word] = [names[int(c)], float(p), start, end]
                else:
                    words[word][3] = max(words[word][3], end)
            results[i] = self._group(text, list(words.values()), set(o["ignore_labels"]))
        return results

    @staticmethod
    def _group(text: str, words: list[list], ignore: set[str]) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = []
        current: dict[str, Any] | None = None
        for label, score, start, end in words:
            bi, kind = _tag(label)
            if current is not None and kind == current["entity_group"] and bi == "I" and label not in ignore:
                current["scores"].append(score)
                current["end"] = end
                continue
            current = {"entity_group": kind, "label": label, "scores": [score], "start": start, "end": end}
            groups.append(current)
        return [{"entity_group": g["entity_group"], "score": sum(g["scores"]) / len(g["scores"]),
                 "word": text[g["start"]:g["end"]], "start": g["start"], "end": g["end"]}
                for g in groups if g["label"] not in ignore]


class FeatureExtractionPipeline(_EncoderPipeline):
    """Vectors for texts: one sentence vector (H floats) per text from a sentence-embedding model (e.g.
    all-MiniLM-L6-v2, through :func:`bigmodels.infer.embed.embed_texts`), else the encoder's token vectors,
    shaped (1, T, H) as transformers returns them. ``return_tensors=True`` gives tensors instead of lists.

    A pipeline that loaded its model itself packs each attention's q/k/v projections into one matrix product
    (``bigmodels.nn.attention.pack_qkv_``) for speed; a module passed in is left as it is.

    >>> embed = pipeline("feature-extraction", "sentence-transformers/all-MiniLM-L6-v2")  # doctest: +SKIP
    >>> len(embed("A man plays a guitar."))  # doctest: +SKIP
    384
    """

    task = "feature-extraction"
    defaults = {"max_length": None, "return_tensors": False}
    default_batch_size = 64

    @property
    def sentence_level(self) -> bool:
        """Whether the model gives one vector per text (a sentence-embedding head)."""
        return _sentence_vectors(self.model)

    def _max_length(self, options: dict[str, Any]) -> int | None:
        if options.get("max_length") is None and self.sentence_level:  # sentence-transformers' max_seq_length
            limit = _positions(self.model, None)
            return min(256, limit) if limit else 256
        return super()._max_length(options)

    def preprocess(self, item: str, **options: Any):
        return item if self.sentence_level else super().preprocess(item, **options)

    def embed(self, texts: Sequence[str], **options: Any) -> torch.Tensor:
        """Sentence vectors of ``texts``: float32 (N, H) on the CPU, in the order given."""
        from .embed import embed_texts

        if not self.sentence_level:
            raise ConfigError(f"{type(self.model).__name__} (head={getattr(self.model.config, 'head', None)!r}) "
                              "gives token vectors, not one vector per text; use a sentence-embedding model "
                              "(head='embedding', e.g. a sentence-transformers directory)")
        _, texts = _texts(list(texts), self.task)
        o = self._options(options)
        return embed_texts(self.model, self.tokenizer, texts, batch_size=self.batch_size,
                           max_length=self._max_length(o))

    def run(self, prepared: Sequence[Any], **options: Any) -> list:
        o = self._options(options)
        if self.sentence_level:
            vectors = list(self.embed(prepared, **options))
        else:
            vectors = [None] * len(prepared)
            for i, hidden, n in self._forward(prepared, self._hidden):  # (T, H)
                vectors[i] = hidden[None, :n]  # (1, T, H)
        return vectors if o["return_tensors"] else [v.tolist() for v in vectors]

    def _hidden(self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        hidden = self.model.encode_ids(ids, attention_mask=mask, token_type_ids=types)
        return hidden[0] if isinstance(hidden, tuple) else hidden  # (B, T, H)


class SentenceSimilarityPipeline(FeatureExtractionPipeline):
    """Cosine similarity of a source sentence to each of some sentences, as the Hugging Face inference API's
    sentence-similarity task: ``pipe(source, [s1, s2])`` or ``pipe({"source_sentence": ..., "sentences": [...]})``
    -> ``[cos(source, s1), cos(source, s2)]``.

    >>> similar = pipeline("sentence-similarity", "sentence-transformers/all-MiniLM-L6-v2")  # doctest: +SKIP
    >>> similar("A man plays a guitar.", ["Someone makes music.", "The stock market fell."])  # doctest: +SKIP
    [0.58, 0.02]
    """

    task = "sentence-similarity"
    defaults = {"max_length": None}

    def __call__(self, source: Any, sentences: Sequence[str] | None = None, **options: Any) -> list[float]:
        if isinstance(source, dict) and sentences is None:
            if set(source) != {"source_sentence", "sentences"}:
                raise DataError(f"sentence-similarity takes {{'source_sentence': str, 'sentences': [str, ...]}}, got "
                                f"the keys {sorted(source)}")
            source, sentences = source["source_sentence"], source["sentences"]
        if not isinstance(source, str) or sentences is None or isinstance(sentences, str):
            raise DataError("sentence-similarity takes a source sentence and a list of sentences to compare it to, "
                            "e.g. pipe('A dog runs.', ['A dog is running.', 'A cat sleeps.'])")
        vectors = F.normalize(self.embed([source, *sentences], **options).double(), dim=-1)
        return (vectors[1:] @ vectors[0]).tolist()


# ---------------------------------------------------------------------------------------------- translation


class TranslationPipeline(Pipeline):
    """Translate texts with an encoder-decoder: ``[{"translation_text"}]`` per text. Texts are stripped; an
    empty one translates to "" without running the model. Options: ``num_beams`` (4; 1 is greedy),
    ``max_new_tokens`` (128), ``max_length`` (source tokens kept; default the model's positions),
    ``length_penalty`` (1.0). Texts of similar length are batched together, longest first.

    >>> translate = pipeline("translation", "runs/multi30k")  # doctest: +SKIP
    >>> translate("A dog runs.")  # doctest: +SKIP
    [{'translation_text': 'Ein Hund rennt.'}]
    """

    task = "translation"
    defaults = {"num_beams": 4, "max_new_tokens": 128, "max_length": None, "length_penalty": 1.0}
    default_batch_size = 64

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from ..data.parallel import seq2seq_token_ids

        self.pad_id = seq2seq_token_ids(self.tokenizer)["pad_token_id"]  # checks bos / eos / pad

    def _check(self, o: dict[str, Any]) -> None:
        for key in ("num_beams", "max_new_tokens"):
            if isinstance(o[key], bool) or not isinstance(o[key], int) or o[key] < 1:
                raise ConfigError(f"{key}={o[key]!r} must be a whole number >= 1 (num_beams=1 is greedy decoding)")

    def preprocess(self, item: str, **options: Any) -> list[int]:
        from ..data.parallel import encode_sources

        o = {**self.options, **options}
        text = item.strip()
        max_length = o["max_length"] or getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        return encode_sources(self.tokenizer, [text], max_length)[0] if text else []

    def run(self, prepared: Sequence[list[int]], **options: Any) -> list[dict[str, str]]:
        from ..data.parallel import source_batch
        from .seq2seq import translate  # looked up at the call: a test may stand in for the decoder

        o = self._options(options)
        out = [""] * len(prepared)
        todo = [i for i, ids in enumerate(prepared) if ids]
        device = model_device(self.model)
        with inference(self.model):
            for rows in self._batches([len(prepared[i]) for i in todo]):
                chunk = [todo[r] for r in rows]
                batch = source_batch([prepared[i] for i in chunk], self.pad_id)
                generated = translate(self.model, batch["input_ids"].to(device),
                                      attention_mask=batch["attention_mask"].to(device), num_beams=o["num_beams"],
                                      max_new_tokens=o["max_new_tokens"], length_penalty=o["length_penalty"])
                for i, row in zip(chunk, generated, strict=True):
                    text = self.tokenizer.decode(list(row), skip_special_tokens=True)
                    out[i] = text.replace("\r", " ").replace("\n", " ").strip()  # one line per translation
        return [{"translation_text": t} for t in out]

    def _single(self, result: Any) -> Any:
        return [result]


# ---------------------------------------------------------------------------------------------- images


def _resize_center_crop(image: torch.Tensor, resize: int, crop: int) -> torch.Tensor:
    """ImageNet evaluation: the shorter side resized to ``resize`` (bilinear, antialiased), then a centred
    ``crop`` x ``crop`` square, as torchvision's weights expect. uint8 (C, H, W) in and out."""
    h, w = image.shape[-2:]
    scale = resize / min(h, w)
    size = (max(crop, round(h * scale)), max(crop, round(w * scale)))
    x = F.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = (size[0] - crop) // 2, (size[1] - crop) // 2
    return x[:, top : top + crop, left : left + crop].round_().clamp_(0, 255).to(torch.uint8)


@dataclass(frozen=True)
class ImagePreprocessing:
    """How a model's images are prepared: ``channels`` (1 = L, 3 = RGB), ``size`` (H, W) the network sees,
    ``resize`` (the shorter side before a centre crop, or None: resize straight to ``size``), and
    ``transform`` (uint8 (B, C, H, W) -> normalised float)."""

    channels: int
    size: tuple[int, int]
    resize: int | None
    transform: Callable[[torch.Tensor], torch.Tensor]


def _side(value: Any) -> tuple[int, int] | None:
    """An image size as (H, W): an int, a pair, or a Hugging Face {"height", "width"} / {"shortest_edge"}."""
    if isinstance(value, dict):
        if "height" in value and "width" in value:
            return int(value["height"]), int(value["width"])
        value = value.get("shortest_edge")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value, value
    if isinstance(value, list | tuple) and len(value) == 2:
        return int(value[0]), int(value[1])
    return None


def image_preprocessing(model: nn.Module, meta: dict[str, Any] | None = None,
                        hf: dict[str, Any] | None = None) -> ImagePreprocessing:
    """The preprocessing of ``model``'s images from its ``meta`` (a training run's or torchvision's record) and
    a Hugging Face ``preprocessor_config.json`` record ``hf``; mean and std default to 0.5 (ViT's)."""
    meta, hf = meta or {}, hf or {}
    cfg = getattr(model, "config", None)
    channels = getattr(cfg, "in_chans", 3)
    size = _side(meta.get("img_size")) or _side(getattr(cfg, "img_size", None)) or _side(hf.get("size")) or (224, 224)
    mean = meta.get("mean") or hf.get("image_mean") or [0.5] * channels
    std = meta.get("std") or hf.get("image_std") or [0.5] * channels
    resize = meta.get("resize_size")
    return ImagePreprocessing(channels, size, resize, image_transforms(mean, std, train=False))


def _from_pil(image: Image.Image, channels: int) -> torch.Tensor:
    image = image.convert("L" if channels == 1 else "RGB")
    array = torch.from_numpy(np.array(image, dtype=np.uint8))  # (H, W) or (H, W, 3)
    return array.unsqueeze(0) if array.ndim == 2 else array.permute(2, 0, 1).contiguous()  # (C, H, W)


def prepare_image(image: str | Path | Image.Image | torch.Tensor, prep: ImagePreprocessing) -> torch.Tensor:
    """One image (a file path, a PIL image or a uint8 (C, H, W) tensor) -> uint8 (C, H, W) at the model's size.
    An unreadable file raises :class:`DataError` naming it."""
    h, w = prep.size
    if isinstance(image, str | Path):
        if prep.resize is None:
            return read_image(image, channels=prep.channels, size=(h, w))
        x = read_image(image, channels=prep.channels)
    elif isinstance(image, Image.Image):
        if prep.resize is None and image.size != (w, h):  # as read_image resizes a file
            image = image.convert("L" if prep.channels == 1 else "RGB").resize((w, h), Image.Resampling.BILINEAR)
        x = _from_pil(image, prep.channels)
        if prep.resize is None:
            return x
    elif isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 or image.dim() != 3 or image.size(0) != prep.channels:
            raise DataError(f"an image tensor must be uint8 ({prep.channels}, H, W) for this model, got "
                            f"{image.dtype} {tuple(image.shape)}")
        x = image
        if prep.resize is None:
            if x.shape[-2:] == (h, w):
                return x
            y = F.interpolate(x[None].float(), size=(h, w), mode="bilinear", antialias=True, align_corners=False)
            return y[0].round_().clamp_(0, 255).to(torch.uint8)
    else:
        raise DataError(f"an image is a file path, a PIL image or a uint8 (C, H, W) tensor, got "
                        f"{type(image).__name__}")
    return _resize_center_crop(x, prep.resize, h)



class ImageClassificationPipeline(Pipeline):
    """Classify images (file paths, PIL images or uint8 (C, H, W) tensors): the ``top_k`` (5) best classes as
    ``[{"label", "score"}]``. Images are prepared as the model's data was: its saved size and normalisation,
    ImageNet's resize-then-centre-crop for torchvision weights (:func:`image_preprocessing`).

    >>> classify = pipeline("image-classification", "resnet50", weights="resnet50-11ad3fa6.pth")  # doctest: +SKIP
    >>> classify("cat.jpg", top_k=1)  # doctest: +SKIP
    [{'label': 'class 281', 'score': 0.62}]
    """

    task = "image-classification"
    defaults = {"top_k": 5}
    default_batch_size = 64
    needs_tokenizer = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.preprocessing = image_preprocessing(self.model, _meta(self.model),
                                                 _hf_record(self.model, "preprocessor_config.json"))

    def _check(self, o: dict[str, Any]) -> None:
        self._top_k(o)

    def _inputs(self, inputs: Any) -> tuple[bool, list]:
        if isinstance(inputs, list | tuple):
            return False, list(inputs)
        return True, [inputs]

    def preprocess(self, item: Any, **options: Any) -> torch.Tensor:
        return prepare_image(item, self.preprocessing)

    def run(self, prepared: Sequence[torch.Tensor], **options: Any) -> list[list[dict[str, Any]]]:
        o = self._options(options)
        normalize = self.preprocessing.transform
        device = model_device(self.model)
        results: list = [None] * len(prepared)
        names = None
        with inference(self.model):
            for start in range(0, len(prepared), self.batch_size):
                images = torch.stack(list(prepared[start:start + self.batch_size]))
                probs = self.model(normalize(images).to(device)).float().softmax(-1).cpu()  # (B, C)
                names = names or _labels(self.model, probs.size(-1), default="class {}")
                top = probs.topk(min(o["top_k"], probs.size(-1)), dim=-1)
                for r, (p, c) in enumerate(zip(top.values.tolist(), top.indices.tolist(), strict=True)):
                    results[start + r] = [{"label": names[k], "score": v} for v, k in zip(p, c, strict=True)]
        return results


# ---------------------------------------------------------------------------------------------- the entry point

_CLASSES: dict[str, type[Pipeline]] = {cls.task: cls for cls in (
    TextGenerationPipeline, FillMaskPipeline, TextClassificationPipeline, TokenClassificationPipeline,
    FeatureExtractionPipeline, SentenceSimilarityPipeline, TranslationPipeline, ImageClassificationPipeline)}
TASKS = tuple(_CLASSES)


def pipeline(task: str, model: nn.Module | str | os.PathLike, *, tokenizer: Any = None,
             weights: str | os.PathLike | None = None, device: str | torch.device | None = None,
             batch_size: int | None = None, backend: str = "torch", **options: Any) -> Pipeline:
    """A callable that runs ``model`` on raw inputs for ``task`` (one of :data:`TASKS`; ``"ner"`` and
    ``"sentiment-analysis"`` are aliases) and returns transformers-shaped results.

    ``model``: an ``nn.Module`` (with ``tokenizer=`` for text), a saved directory or training run, a Hugging
    Face directory or hub name, or a registry name (fresh weights, or ``weights=`` a torchvision state dict
    file or URL). ``tokenizer``: a Tokenizer or its file / directory; by default the one saved with the model.
    ``device``: where to move the model (default: where it is). ``batch_size``: inputs per forward pass
    (default per task). ``options``: the task's defaults for every call (see each pipeline class).
    ``backend="onnxruntime"``: ``model`` is an ONNX export (``bigmodels export``: its directory or .onnx file),
    run in ONNX Runtime for the tasks without decoding (classification, fill-mask, feature-extraction, ...).

    >>> import bigmodels
    >>> from bigmodels.data.tokenizers import Tokenizer
    >>> tok = Tokenizer.train_chars("abc ")
    >>> pipe = bigmodels.pipeline("text-generation", bigmodels.create_model("gpt_mini", vocab_size=4),
    ...                           tokenizer=tok, max_new_tokens=3, temperature=0)
    >>> len(pipe(["ab", "c"]))
    2
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend!r} is not one of {', '.join(BACKENDS)}; use backend='torch'")
    if not isinstance(task, str) or _ALIASES.get(task, task) not in _CLASSES:
        raise ConfigError(f"task {task!r} is not a pipeline task; choose one of {', '.join(TASKS)}")
    cls = _CLASSES[_ALIASES.get(task, task)]
    module, directory = _load(model, weights)
    if getattr(module, "backend", "torch") == "onnxruntime":  # an ONNX export (bigmodels.export) runs as it is
        if cls.task not in module.pipeline_tasks:
            raise ConfigError(f"{cls.task} does not run on an ONNX export (a full-sequence graph without a decoding "
                              f"cache); it runs {', '.join(module.pipeline_tasks)}; use the PyTorch model")
    elif backend == "onnxruntime":
        what = type(model).__name__ if isinstance(model, nn.Module) else repr(str(model))
        raise ConfigError(f"backend='onnxruntime' runs an ONNX export, and {what} is a PyTorch model; "
                          "export it first (`bigmodels export MODEL OUT --format onnx`) and pass OUT")
    owned = not isinstance(model, nn.Module)
    tok = _find_tokenizer(tokenizer, module, directory) if cls.needs_tokenizer or tokenizer is not None else None
    pipe = cls(module, tok, batch_size=batch_size, device=device, **options)
    if owned and isinstance(pipe, FeatureExtractionPipeline):
        pack_qkv_(module)  # its own model: one q/k/v matrix product per attention instead of three
    return pipe
