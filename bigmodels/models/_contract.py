"""The model contract: what every later stage (train, infer, compress, explain, export, serve) may rely on.

Written once here and checked over every registered model by ``tests/models/test_contract.py``. A stage that
acts on "any model" uses only what this file names; it never imports a specific family.

- Four kinds of model, each a Protocol naming the methods it offers: :class:`VisionModel` (images -> classes),
  :class:`Decoder` (token ids -> next-token logits), :class:`Encoder` (token ids -> what its head gives) and
  :class:`EncoderDecoder` (source ids + target ids -> target logits). :func:`kind_of` says which one a model is
  (from its task); :func:`check_contract` lists where a model breaks the contract (empty when it conforms).
- :class:`ModelInfo`: who a model is (registry name, family, task) and where it came from (source, path,
  format-specific meta), attached as ``model.info`` to every model that the registry, ``load`` or an interop
  adapter builds; read it with :func:`model_info`.
- :func:`example_inputs`: a batch that any registered model accepts, built from its config and task, so
  every stage and test can drive any model: ``call(model, example_inputs(model))``.
- :func:`call`: run a model on the batch form its task uses (a tensor, or a dict of keyword arguments).
- Every model carries its config, a dataclass; ``bigmodels.save``/``load`` round-trip model, config and info.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["model_device", "inference",
    "TASKS", "ModelInfo", "model_info", "set_model_info", "example_inputs", "call", "VOCAB_TASKS",
    "VisionModel", "Decoder", "Encoder", "EncoderDecoder", "KINDS", "KIND_OF_TASK", "kind_of", "check_contract",
]

# The tasks a model's head may solve. Defined by the contract (each has a kind of model below) and re-exported by
# the registry, which checks every preset's task against it.
TASKS = (
    "image_classification",
    "sequence_classification",  # a label per text (or text pair)
    "token_classification",  # a label per token (NER)
    "question_answering",  # extractive: start/end of the answer span
    "language_modeling",  # next token (causal)
    "masked_language_modeling",  # BERT pretraining: masked tokens (+ next-sentence prediction)
    "sentence_embedding",  # a vector per text
    "translation",  # sequence to sequence (source ids -> target ids)
)
# tasks whose input is token ids (B, T)
VOCAB_TASKS = ("language_modeling", "sequence_classification", "token_classification", "question_answering",
               "masked_language_modeling", "sentence_embedding")


# ---------------------------------------------------------------------------------------------- the four kinds


@runtime_checkable
class VisionModel(Protocol):
    """Images (B, C, H, W) -> class logits (B, num_classes): ResNet, ViT, Inception, CNN, MLP, RNN over rows.

    ``forward(x) == forward_head(forward_features(x))``. ``forward_intermediates(x)``: the output of each stage
    (feature maps (B, C_i, H_i, W_i), token sequences (B, N, D), hidden activations (B, D_i) or the recurrence's
    outputs (B, T, D)), what detection and segmentation heads read. ``reset_classifier(n)``: a fresh n-way head
    (0: none, ``forward`` then gives the pooled features).
    """

    config: Any

    def forward(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor: ...

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]: ...

    def reset_classifier(self, num_classes: int) -> None: ...


@runtime_checkable
class Decoder(Protocol):
    """Token ids (B, T) -> next-token logits (B, T, vocab_size): GPT, the RNN language models.

    ``forward_hidden(ids)``: the states (B, T, C) the output layer reads. ``new_cache()``: an empty decoding
    state, so that ``forward(ids[:, :k], cache=c)`` then ``forward(ids[:, k:], cache=c)`` gives the logits of
    ``forward(ids)``. Decoding itself (greedy, sampling, beams) lives in ``bigmodels.infer``, not in the model.
    """

    config: Any

    def forward(self, ids: torch.Tensor, *, cache: Any = None) -> torch.Tensor: ...

    def forward_hidden(self, ids: torch.Tensor, *, cache: Any = None) -> torch.Tensor: ...

    def new_cache(self) -> Any: ...


@runtime_checkable
class Encoder(Protocol):
    """Token ids (B, T) and their ``attention_mask`` (B, T) (1 = token) -> what the head gives: masked-LM logits,
    class logits, token logits, answer-span logits or sentence vectors (BERT, MiniLM).

    ``task``: the registry task the head solves. ``encode_ids(ids, attention_mask)``: (hidden states (B, T, H),
    pooled (B, H) or None), whatever the head; named for its input so that it is not taken for
    sentence-transformers' ``encode(texts)``. ``reset_classifier(n)``: a fresh n-way classifier (fine-tuning).
    """

    config: Any
    task: str

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Any: ...

    def encode_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    def reset_classifier(self, num_labels: int) -> None: ...


@runtime_checkable
class EncoderDecoder(Protocol):
    """Source ids (B, S) + decoder input ids (B, T) -> target logits (B, T, tgt_vocab_size): the Transformer, Marian.

    ``forward(input_ids, attention_mask, decoder_input_ids)`` equals ``decode(decoder_input_ids, memory,
    attention_mask)`` with ``memory = encode(input_ids, attention_mask)`` (B, S, D); ``decode`` with
    ``cache=new_cache()`` takes the target a few tokens at a time, and ``reorder_cache(cache, beam_idx)`` keeps
    the rows beam search picked.
    """

    config: Any

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                decoder_input_ids: torch.Tensor | None = None) -> torch.Tensor: ...

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor: ...

    def decode(self, decoder_input_ids: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None = None,
               cache: Any = None) -> torch.Tensor: ...

    def new_cache(self) -> Any: ...

    def reorder_cache(self, cache: Any, beam_idx: torch.Tensor) -> Any: ...


KINDS: dict[str, type] = {"vision": VisionModel, "decoder": Decoder, "encoder": Encoder,
                          "encoder_decoder": EncoderDecoder}
# the kind of model each registry task needs (its inputs and outputs)
KIND_OF_TASK: dict[str, str] = {
    "image_classification": "vision",
    "language_modeling": "decoder",
    "sequence_classification": "encoder",
    "token_classification": "encoder",
    "question_answering": "encoder",
    "masked_language_modeling": "encoder",
    "sentence_embedding": "encoder",
    "translation": "encoder_decoder",
}


def _members(protocol: type) -> list[str]:
    """The attributes and methods a Protocol requires."""
    methods = [n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")]
    return [*protocol.__annotations__, *methods]


# ---------------------------------------------------------------------------------------------- ModelInfo


@dataclass
class ModelInfo:
    """Who a model is and where it came from.

    ``name``: the registered preset (``"resnet50"``), or the family where a loaded model matches no preset;
    ``family``: the registry family that built it; ``task``: the registry task its head solves;
    ``source``: ``"registry"`` (built by name), ``"bigmodels"`` (a saved directory), ``"huggingface"``,
    ``"torchvision"``, ...; ``path``: the file or directory it was read from; ``meta``: format-specific facts
    a stage may need (class names, preprocessing, the data's languages). ``bigmodels.save`` writes name,
    family, task and the JSON-serialisable meta; ``load`` reads them back.
    """

    name: str
    family: str
    task: str
    source: str = "registry"
    path: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside a (Distributed)DataParallel wrapper."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def _class_task(model: nn.Module) -> str | None:
    """The task of a family whose model class decides it (a ``task`` property or class attribute), else None."""
    attr = getattr(type(model), "task", None)
    if isinstance(attr, property):
        return model.task
    return attr if isinstance(attr, str) else None


def model_info(model: nn.Module) -> ModelInfo:
    """The :class:`ModelInfo` of a bigmodels model; a clear error for a module the registry did not build.

    A family whose head decides its task (BERT after ``reset_classifier``) reports the task of its head now.

    >>> import bigmodels
    >>> model_info(bigmodels.create_model("gpt_mini")).task
    'language_modeling'
    """
    model = _unwrap(model)
    info = getattr(model, "info", None)
    if not isinstance(info, ModelInfo):
        raise ConfigError(f"{type(model).__name__} carries no ModelInfo: build it with bigmodels.create_model(name) "
                          "or read it with bigmodels.load(path) (or attach one with set_model_info)")
    task = _class_task(model)
    if task is not None:
        info.task = task
    return info


def set_model_info(model: nn.Module, info: ModelInfo) -> nn.Module:
    """Attach ``info`` as ``model.info``; a family whose head decides its task (``type(model).task``) keeps that
    task. Returns ``model``."""
    task = _class_task(model)
    if task is not None:
        info.task = task
    model.info = info
    return model


def kind_of(model: nn.Module) -> str:
    """The kind of ``model``: ``"vision"``, ``"decoder"``, ``"encoder"`` or ``"encoder_decoder"`` (a key of
    :data:`KINDS`), from its task; a module without a task by the one Protocol it satisfies.

    >>> import bigmodels
    >>> kind_of(bigmodels.create_model("transformer_mini"))
    'encoder_decoder'
    """
    model = _unwrap(model)
    info = getattr(model, "info", None)
    task = model_info(model).task if isinstance(info, ModelInfo) else _class_task(model)
    if task is not None:
        if task not in KIND_OF_TASK:
            raise ConfigError(f"task {task!r} of {type(model).__name__} has no model kind; known tasks: "
                              f"{', '.join(KIND_OF_TASK)} (extend KIND_OF_TASK in models/_contract.py)")
        return KIND_OF_TASK[task]
    matches = [kind for kind, protocol in KINDS.items() if isinstance(model, protocol)]
    if len(matches) == 1:
        return matches[0]
    raise ConfigError(f"{type(model).__name__} has no task and satisfies {matches or 'none'} of the model kinds "
                      f"({', '.join(KINDS)}); build it with bigmodels.create_model(name) or attach a ModelInfo")


# ---------------------------------------------------------------------------------------------- inputs


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s parameters; the CPU for a module without any (an ONNX Runtime runner)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


@contextlib.contextmanager
def inference(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) and no autograd while the block runs; the model's mode is restored afterwards,
    also on an error: what every stage that runs a caller's model for its outputs wants."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


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
    device = model_device(model)
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


# ---------------------------------------------------------------------------------------------- the check


def check_contract(model: nn.Module) -> list[str]:
    """Where ``model`` breaks the contract: an empty list when it conforms.

    Checks that ``model.config`` is a dataclass; that its :class:`ModelInfo` is present with a known task;
    that it has every method of its kind's Protocol; and, in eval mode without gradients (its mode restored
    after), that ``call(model, example_inputs(model))`` runs and the kind's identities hold (features + head =
    forward; decoding with a cache = one forward; ...). Whether the ModelInfo agrees with the registry (family,
    config class, preset) is :func:`bigmodels.registry.check_registered`; ``bigmodels.testing.assert_conforms``
    runs both.

    >>> import bigmodels
    >>> check_contract(bigmodels.create_model("mlp_small"))
    []
    """
    model = _unwrap(model)
    problems: list[str] = []
    config = getattr(model, "config", None)
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        problems.append(f"{type(model).__name__}.config is a {type(config).__name__}, not a dataclass instance: "
                        "every model carries its config")
    try:
        info = model_info(model)
    except ConfigError as e:
        return [*problems, str(e)]
    problems += _check_info(info)
    kind = KIND_OF_TASK.get(info.task)
    if kind is None:
        return problems  # _check_info reported the unknown task
    missing = [m for m in _members(KINDS[kind]) if not hasattr(model, m)]
    problems += [f"a {kind} model ({info.task}) needs {m!r}; {type(model).__name__} has none" for m in missing]
    if not missing and not problems:
        problems += _run(model, kind)
    return problems


def _check_info(info: ModelInfo) -> list[str]:
    """What the contract alone can say of a ModelInfo (whether it agrees with the registry is
    :func:`bigmodels.registry.check_registered`'s question)."""
    problems = []
    if info.task not in TASKS:
        problems.append(f"ModelInfo.task {info.task!r} is not a registry task ({', '.join(TASKS)})")
    if not isinstance(info.meta, dict):
        problems.append(f"ModelInfo.meta is a {type(info.meta).__name__}, not a dict")
    return problems


def _shape(out: Any) -> str:
    if isinstance(out, torch.Tensor):
        return str(tuple(out.shape))
    if isinstance(out, (tuple, list)):
        return f"({', '.join(_shape(o) for o in out)})"
    return type(out).__name__


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
            and torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-4))


def _run(model: nn.Module, kind: str) -> list[str]:
    """Run the model on its example inputs and check the identities of its kind."""
    was_training = model.training
    model.eval()
    step = "example_inputs(model)"
    try:
        with torch.no_grad():
            x = example_inputs(model)
            step = "call(model, example_inputs(model))"
            out = call(model, x)
            step = f"the {kind} checks"
            return _IDENTITIES[kind](model, x, out)
    except Exception as e:  # noqa: BLE001 (a check reports what broke; it does not stop at the first model)
        return [f"{step} raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"]
    finally:
        model.train(was_training)


def _vision(model: nn.Module, x: torch.Tensor, out: Any) -> list[str]:
    problems = []
    n = getattr(model.config, "num_classes", 0)
    if not (isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[0] == x.shape[0]
            and (not n or out.shape[1] == n)):
        problems.append(f"forward(images {tuple(x.shape)}) gave {_shape(out)}; a vision model gives logits "
                        f"(B, num_classes) = ({x.shape[0]}, {n})")
    if not _close(model.forward_head(model.forward_features(x)), out):
        problems.append("forward_head(forward_features(x)) differs from forward(x)")
    maps = model.forward_intermediates(x)
    if not (isinstance(maps, (list, tuple)) and maps
            and all(isinstance(m, torch.Tensor) and m.shape[0] == x.shape[0] for m in maps)):
        problems.append(f"forward_intermediates(x) gave {_shape(maps)}; expected a non-empty list of (B, ...) "
                        "tensors, one per stage")
    return problems


def _decoder(model: nn.Module, ids: torch.Tensor, out: Any) -> list[str]:
    problems = []
    (b, t), vocab = ids.shape, model.config.vocab_size
    if not (isinstance(out, torch.Tensor) and tuple(out.shape) == (b, t, vocab)):
        problems.append(f"forward(ids {(b, t)}) gave {_shape(out)}; a decoder gives logits (B, T, vocab_size) = "
                        f"{(b, t, vocab)}")
        return problems
    hidden = model.forward_hidden(ids)
    if not (isinstance(hidden, torch.Tensor) and tuple(hidden.shape[:2]) == (b, t)):
        problems.append(f"forward_hidden(ids {(b, t)}) gave {_shape(hidden)}; expected (B, T, C)")
    cache, k = model.new_cache(), t // 2
    steps = torch.cat([model(ids[:, :k], cache=cache), model(ids[:, k:], cache=cache)], dim=1)
    if not _close(steps, out):
        problems.append("forward(ids[:, :k], cache=c) then forward(ids[:, k:], cache=c) with c = new_cache() "
                        "differs from forward(ids)")
    return problems


def _encoder(model: nn.Module, ids: torch.Tensor, out: Any) -> list[str]:
    problems = []
    b, t = ids.shape
    first = out[0] if isinstance(out, (tuple, list)) else out
    if not (isinstance(first, torch.Tensor) and first.shape[0] == b):
        problems.append(f"forward(ids {(b, t)}) gave {_shape(out)}; expected the head's output for {b} texts")
    mask = torch.ones_like(ids)
    if not _close(model(ids, attention_mask=mask), out):
        problems.append("forward(ids, attention_mask=all ones) differs from forward(ids)")
    encoded = model.encode_ids(ids, attention_mask=mask)
    if not (isinstance(encoded, tuple) and len(encoded) == 2 and isinstance(encoded[0], torch.Tensor)
            and tuple(encoded[0].shape[:2]) == (b, t)
            and (encoded[1] is None or (isinstance(encoded[1], torch.Tensor) and encoded[1].shape[0] == b))):
        problems.append(f"encode_ids(ids {(b, t)}, attention_mask) gave {_shape(encoded)}; expected (hidden states "
                        "(B, T, H), pooled (B, H) or None)")
    return problems


def _encoder_decoder(model: nn.Module, x: dict[str, torch.Tensor], out: Any) -> list[str]:
    problems = []
    ids, mask, target = x["input_ids"], x["attention_mask"], x["decoder_input_ids"]
    (b, t), vocab = target.shape, model.config.tgt_vocab_size
    if not (isinstance(out, torch.Tensor) and tuple(out.shape) == (b, t, vocab)):
        problems.append(f"forward(...) gave {_shape(out)}; an encoder-decoder gives logits (B, T, tgt_vocab_size) "
                        f"= {(b, t, vocab)}")
        return problems
    memory = model.encode(ids, mask)
    if not _close(model.decode(target, memory, mask), out):
        problems.append("decode(decoder_input_ids, encode(input_ids, attention_mask), attention_mask) differs "
                        "from forward(...)")
    cache, k = model.new_cache(), t // 2
    steps = torch.cat([model.decode(target[:, :k], memory, mask, cache=cache),
                       model.decode(target[:, k:], memory, mask, cache=cache)], dim=1)
    if not _close(steps, out):
        problems.append("decode in two steps with cache=new_cache() differs from one forward(...)")
    return problems


_IDENTITIES = {"vision": _vision, "decoder": _decoder, "encoder": _encoder, "encoder_decoder": _encoder_decoder}
