"""What a server serves: one model, loaded once, and the pipelines of the endpoints it can answer.

``load_served(source)`` reads a bigmodels directory or training run, a Hugging Face directory or hub name, a
plain (torchvision) state dict with ``architecture=`` naming its registered model, or takes an ``nn.Module``
(with ``tokenizer=``); it builds one :func:`bigmodels.pipeline` per task the model runs. An ONNX export (a
``.onnx`` file, or a directory holding ``model.onnx``) is run by ONNX Runtime through the same pipelines
(``bigmodels.load`` gives its ONNX Runtime model; the ``export`` extra), for the tasks without decoding.

A model the server loads itself (a path, not an ``nn.Module`` passed in, which stays as given) is its own copy,
so it is made fast in place where it serves embeddings, text classification or completions on the CPU
(:func:`~bigmodels.compress.layout.prepare_for_cpu_decoding`: oneDNN-packed weights, GELU fused, a decoding step's
rows on the column-major float32 kernel; encoders also pack q/k/v): the same vectors, scores and greedy tokens to
float rounding; on 2 cores of an AMD EPYC, GPT-2 124M's greedy completions 1.50-1.59x the new tokens per second of
the model as given, a MiniLM-size classifier 1.15x its sentences per second (``benchmarks/serve_prepared.py``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..infer.pipelines import FeatureExtractionPipeline, Pipeline, model_task, pipeline, supported_tasks
from ..models._contract import model_device
from ..nn.attention import pack_qkv_

__all__ = ["Served", "load_served", "ENDPOINT_TASKS", "encode_for_embedding", "embed_encoded", "batch_functions",
           "BATCHED_ENDPOINTS"]

# endpoint -> the pipeline tasks that answer it (the first the model runs)
ENDPOINT_TASKS: dict[str, tuple[str, ...]] = {
    "/v1/completions": ("text-generation",),
    "/v1/embeddings": ("feature-extraction",),
    "/v1/classify": ("text-classification", "image-classification"),
    "/v1/translate": ("translation",),
}


@dataclass
class Served:
    """The served model: its ``name`` (the id clients send as ``model``), the module, its tokenizer, its
    registry ``task``, ``pipelines`` by endpoint, and ``context`` (the most tokens a completion may span)."""

    name: str
    model: nn.Module | None
    tokenizer: Any
    task: str
    pipelines: dict[str, Pipeline]
    context: int | None
    created: int = field(default_factory=lambda: int(time.time()))

    def pipe(self, endpoint: str) -> Pipeline | None:
        return self.pipelines.get(endpoint)


def _onnx_path(source: Any) -> Path | None:
    """The ONNX export ``source`` names (a ``.onnx`` file, or a directory holding ``model.onnx``), else None."""
    if not isinstance(source, str | os.PathLike):
        return None
    path = Path(source)
    return path if path.suffix == ".onnx" or (path.is_dir() and (path / "model.onnx").is_file()) else None


def _load_onnx(path: Path, tokenizer: Any) -> tuple[nn.Module, Any, str]:
    """(the export as an ONNX Runtime model, its tokenizer, its name): ``bigmodels.load`` runs a ``.onnx`` in
    ONNX Runtime (the ``export`` extra), and the export writes the tokenizer beside the graph."""
    from ..io import load, load_tokenizer

    module = load(path)
    where = path if path.is_dir() else path.parent
    if tokenizer is None and ((where / "tokenizer.json").is_file() or (where / "vocab.txt").is_file()):
        tokenizer = load_tokenizer(where)
    return module, tokenizer, where.name


def load_served(source: nn.Module | str | os.PathLike, *, architecture: str | None = None, tokenizer: Any = None,
                name: str | None = None, batch_size: int = 64) -> Served:
    """Load ``source`` and build the pipelines of every endpoint its model answers (see the module docstring).

    >>> import bigmodels
    >>> from bigmodels.data.tokenizers import Tokenizer
    >>> tok = Tokenizer.train_chars("hello world")
    >>> served = load_served(bigmodels.create_model("gpt_mini", vocab_size=tok.vocab_size), tokenizer=tok)
    >>> sorted(served.pipelines), served.context
    (['/v1/completions'], 128)
    """
    from ..io import load, resolve_checkpoint, saved_tokenizer

    onnx = _onnx_path(source)
    if onnx is not None and architecture is not None:
        raise ConfigError(f"--model {architecture} names the architecture of a plain state dict; an ONNX export "
                          "carries its own graph, so drop --model")
    owned = not isinstance(source, nn.Module)
    if not owned:
        if architecture is not None:
            raise ConfigError("architecture= names the model of a plain state dict; an nn.Module already has one")
        module, default_name = source, None
    elif onnx is not None:
        module, tokenizer, default_name = _load_onnx(onnx, tokenizer)
    elif architecture is not None:
        if not str(architecture).strip():
            raise ConfigError("--model is empty; name the registered architecture of the state dict, e.g. --model "
                              "resnet50 (`bigmodels models` lists them), or leave --model out for a saved model")
        module, default_name = load(source, model=architecture), architecture
    else:
        directory = resolve_checkpoint(source)
        module, default_name = load(directory), Path(str(source)).name or directory.name
        if tokenizer is None:
            tokenizer = saved_tokenizer(directory)
    module.eval()
    task = model_task(module)
    runs = supported_tasks(module)
    if getattr(module, "backend", "torch") == "onnxruntime":  # an export runs the tasks without decoding
        runs = tuple(t for t in runs if t in getattr(module, "pipeline_tasks", ()))
    elif owned and any(t in runs for t in ("feature-extraction", "text-classification", "text-generation")):
        if "feature-extraction" in runs or "text-classification" in runs:
            pack_qkv_(module)  # the server's own copy: one q/k/v matrix product per attention, the same vectors
        if model_device(module).type == "cpu":  # oneDNN-packed weights (~1.9x the sentences/s of MKL's here),
            from ..compress.layout import prepare_for_cpu_decoding  # GELU fused into fc1, freed memory reused;

            prepare_for_cpu_decoding(module)  # a decoding step's rows on the column-major float32 kernel
    pipes: dict[str, Pipeline] = {}
    for endpoint, tasks in ENDPOINT_TASKS.items():
        task_name = next((t for t in tasks if t in runs), None)
        if task_name is None:
            continue
        pipe = pipeline(task_name, module, tokenizer=tokenizer, batch_size=None if task_name in (
            "text-generation", "translation") else batch_size)
        if isinstance(pipe, FeatureExtractionPipeline) and not pipe.sentence_level:
            continue  # token vectors are no embedding (a BERT with an MLM head): no /v1/embeddings
        pipes[endpoint] = pipe
    if not pipes:
        raise ConfigError(f"{type(module).__name__} is a {task} model, which no endpoint serves; the server runs "
                          "language models (/v1/completions), sentence-embedding models (/v1/embeddings), text "
                          "and image classifiers (/v1/classify) and translation models (/v1/translate)")
    info = getattr(module, "info", None)
    served_name = name or default_name or getattr(info, "name", None) or type(module).__name__
    return Served(served_name, module, tokenizer, task, pipes, _context(module))


def _context(model: nn.Module | None) -> int | None:
    """The most tokens a language model attends to (prompt + completion); None when unbounded (an RNN)."""
    context = getattr(getattr(model, "config", None), "block_size", None)
    return context if isinstance(context, int) and context > 0 else None


Encoded = tuple[list[int], list[int]]  # one text's token ids and token type ids, special tokens included


def encode_for_embedding(pipe: FeatureExtractionPipeline, texts: Sequence[str]) -> tuple[list[Encoded], int]:
    """``texts`` tokenized once for :func:`embed_encoded`, as ``pipe.embed`` would (truncated to its
    ``max_length``), and the tokens they have before truncation (what the request is billed).

    >>> import bigmodels, tempfile
    >>> from bigmodels.testing import tiny_model, wordpiece_tokenizer
    >>> tok = wordpiece_tokenizer(["a", "dog", "runs"], tempfile.mkdtemp())
    >>> pipe = bigmodels.pipeline("feature-extraction", tiny_model("bert-base", vocab_size=tok.vocab_size,
    ...                           head="embedding"), tokenizer=tok)
    >>> rows, tokens = encode_for_embedding(pipe, ["a dog runs"])
    >>> len(rows[0][0]), tokens
    (5, 5)
    """
    limit = pipe._max_length(pipe._options({}))
    enc = pipe.tokenizer.encode_batch(list(texts), truncation=False, padding=False, return_tensors=False)
    ids, types = enc["input_ids"], enc["token_type_ids"]
    tokens = sum(len(row) for row in ids)
    long = [i for i, row in enumerate(ids) if limit is not None and len(row) > limit]
    if long:  # rare: only those are encoded again, truncated as the tokenizer truncates
        cut = pipe.tokenizer.encode_batch([texts[i] for i in long], max_length=limit, padding=False,
                                          return_tensors=False)
        for j, i in enumerate(long):
            ids[i], types[i] = cut["input_ids"][j], cut["token_type_ids"][j]
    return list(zip(ids, types, strict=True)), tokens


def embed_encoded(model: nn.Module, rows: Sequence[Encoded], pad_id: int) -> list[torch.Tensor]:
    """The sentence vectors of tokenized texts (one model call, longest first, right-padded; the encoder skips
    the padding), as float32 CPU rows in the order given: what ``pipe.embed`` gives for the same texts. The
    server's batches call this in a worker thread, so no tokenizer runs there."""
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    width = len(rows[order[0]][0])
    pads = [width - len(rows[i][0]) for i in order]
    ids = torch.tensor([rows[i][0] + [pad_id] * p for i, p in zip(order, pads, strict=True)])
    types = torch.tensor([rows[i][1] + [0] * p for i, p in zip(order, pads, strict=True)])
    mask = torch.tensor([[1] * (width - p) + [0] * p for p in pads])
    device = model_device(model)  # none: ONNX Runtime
    with torch.inference_mode():
        vectors = model(ids.to(device), attention_mask=mask.to(device), token_type_ids=types.to(device))
    vectors = vectors.float().cpu()
    out: list[torch.Tensor] = [None] * len(rows)  # type: ignore[list-item]
    for k, i in enumerate(order):
        out[i] = vectors[k]
    return out


BATCHED_ENDPOINTS = ("/v1/embeddings", "/v1/classify")  # concurrent requests share model calls


def batch_functions(served: Served) -> dict[str, Callable[[list, dict], list]]:
    """The batch function (``fn(items, options) -> results``) of each batched endpoint the model answers: what the
    server's batcher runs, in its own process or in the model's (:mod:`bigmodels.serve.worker`)."""
    functions = {}
    for endpoint in BATCHED_ENDPOINTS:
        pipe = served.pipe(endpoint)
        if pipe is not None:
            functions[endpoint] = _embed_rows(pipe) if endpoint == "/v1/embeddings" else _classify_rows(pipe)
    return functions


def _embed_rows(pipe) -> Callable[[list, dict], list]:
    pad_id = pipe.model.config.pad_token_id

    def run(rows: list, options: dict) -> list:  # texts tokenized by the handler: the worker only runs the model
        return embed_encoded(pipe.model, rows, pad_id)

    return run


def _classify_rows(pipe) -> Callable[[list, dict], list]:
    def run(prepared: list, options: dict) -> list:
        return pipe.run(prepared, **options)

    return run
