"""Run an ONNX export in ONNX Runtime behind the call signature of the PyTorch model of its kind.

:func:`load_onnx` reads ``model.onnx`` (or ``model.int8.onnx``) with the ``config.json`` written beside it and
returns an :class:`OnnxModel`: an ``nn.Module`` without parameters whose ``forward`` takes and returns torch
tensors like the model it was exported from (``images``; ``ids``; ``input_ids, attention_mask``; ...), and which
carries that model's config and :class:`~bigmodels.models._contract.ModelInfo`, so the pipelines run it in place
of PyTorch: ``bigmodels.load("out/model.onnx")`` or ``bigmodels.pipeline(task, "out", backend="onnxruntime")``.

Exported decoders are full-sequence graphs without a decoding cache: ``forward(ids)`` gives the logits of
every position; generation and translation stay on PyTorch.

    >>> import bigmodels
    >>> model = bigmodels.load("out/model.onnx")  # doctest: +SKIP
    >>> model(torch.randn(2, 1, 28, 28)).shape  # doctest: +SKIP
    torch.Size([2, 10])
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import from_dict
from ..errors import CheckpointError, ConfigError, DataError
from ..models._contract import KIND_OF_TASK, ModelInfo
from ..registry import get_family
from .onnx import CONFIG_FILE, ONNX_FILE, _session, require_onnx

__all__ = ["OnnxModel", "OnnxVisionModel", "OnnxDecoder", "OnnxEncoder", "OnnxTokenEncoder", "OnnxEncoderDecoder",
           "load_onnx", "onnx_file", "PIPELINE_TASKS"]

# the pipeline tasks an ONNX export runs (decoding with a cache stays on PyTorch)
PIPELINE_TASKS = ("fill-mask", "text-classification", "token-classification", "feature-extraction",
                  "sentence-similarity", "image-classification")


def onnx_file(path: str | Path) -> Path | None:
    """The ONNX file ``path`` names: a ``.onnx`` file, or a directory holding ``model.onnx``; else None."""
    p = Path(path)
    if p.suffix == ".onnx":
        return p
    if p.is_dir() and (p / ONNX_FILE).is_file():
        return p / ONNX_FILE
    return None


class OnnxModel(nn.Module):
    """An exported model in an ONNX Runtime session: no parameters, torch tensors in and out.

    ``config`` and ``info`` are the exported model's (``info.source == "onnx"``, ``info.path`` the directory);
    ``session`` is the ``onnxruntime.InferenceSession``; ``threads`` sets its intra-op threads (default: ONNX
    Runtime's, one per core). ``train()`` is accepted and changes nothing: the graph is an inference graph.
    """

    backend = "onnxruntime"
    pipeline_tasks = PIPELINE_TASKS

    def __init__(self, path: str | Path, config: Any, info: ModelInfo, record: dict[str, Any], *,
                 threads: int | None = None) -> None:
        super().__init__()
        self.path, self.config, self.info, self.record = Path(path), config, info, record
        self.session = _session(self.path, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._shapes = {i.name: i.shape for i in self.session.get_inputs()}

    def extra_repr(self) -> str:
        return f"{self.path}, {self.info.name} ({self.info.family}), inputs={self.input_names}"

    def run(self, **feeds: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Run the graph on named inputs (the export's names); one output is a tensor, several a tuple."""
        arrays = {}
        for name in self.input_names:
            if name not in feeds or feeds[name] is None:
                raise DataError(f"{self.path.name} needs the input {name!r}; it takes {', '.join(self.input_names)}")
            t = feeds[name]
            for axis, size in enumerate(self._shapes[name]):
                if isinstance(size, int) and axis < t.dim() and t.shape[axis] != size:
                    raise DataError(f"{self.path.name} takes {name} with size {size} on axis {axis} (the export "
                                    f"fixed it), got {tuple(t.shape)}; pad or cut to {size}, or re-export")
            dtype = np.float32 if t.is_floating_point() else np.int64
            arrays[name] = np.ascontiguousarray(t.detach().cpu().numpy(), dtype=dtype)
        outputs = [torch.from_numpy(o) for o in self.session.run(None, arrays)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


class OnnxVisionModel(OnnxModel):
    """Images (B, C, H, W) -> logits (B, num_classes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(images=x)


class OnnxDecoder(OnnxModel):
    """Token ids (B, T) -> logits (B, T, vocab_size), the whole sequence at once (no decoding cache)."""

    def forward(self, ids: torch.Tensor, *, cache: Any = None) -> torch.Tensor:
        if cache is not None:
            raise ConfigError("an ONNX decoder is a full-sequence graph without a decoding cache; pass the whole "
                              "sequence, or decode with the PyTorch model")
        return self.run(input_ids=ids)

    def new_cache(self) -> Any:
        raise ConfigError("an ONNX decoder has no decoding cache (a static full-sequence graph); generate with the "
                          "PyTorch model (bigmodels.load of the saved directory)")


class OnnxEncoder(OnnxModel):
    """Token ids (B, T) and attention_mask (B, T) -> what the exported head gives."""

    @property
    def task(self) -> str:
        return self.info.task

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> Any:
        feeds = {"input_ids": input_ids,
                 "attention_mask": torch.ones_like(input_ids) if attention_mask is None else attention_mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        return self.run(**feeds)


class OnnxTokenEncoder(OnnxEncoder):
    """An encoder exported with its hidden states as the output (``head="encoder"``): also ``encode_ids``."""

    def encode_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        return self(input_ids, attention_mask, token_type_ids), None


class OnnxEncoderDecoder(OnnxModel):
    """Source ids (B, S), their mask and decoder input ids (B, T) -> target logits (B, T, tgt_vocab_size)."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                decoder_input_ids: torch.Tensor | None = None) -> torch.Tensor:
        if decoder_input_ids is None:
            raise DataError("an ONNX encoder-decoder needs decoder_input_ids (B, T), the target so far")
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        return self.run(input_ids=input_ids, attention_mask=mask, decoder_input_ids=decoder_input_ids)


_CLASSES = {"vision": OnnxVisionModel, "decoder": OnnxDecoder, "encoder": OnnxEncoder,
            "encoder_decoder": OnnxEncoderDecoder}


def load_onnx(path: str | Path, *, threads: int | None = None) -> OnnxModel:
    """An :class:`OnnxModel` from an export: a ``.onnx`` file with ``config.json`` beside it, or the directory.

    >>> model = load_onnx("out")  # doctest: +SKIP
    >>> model.info.source  # doctest: +SKIP
    'onnx'
    """
    require_onnx()
    file = onnx_file(path)
    if file is None or not file.is_file():
        raise CheckpointError(f"{path} is no ONNX export: expected a .onnx file or a directory holding {ONNX_FILE}; "
                              "write one with `bigmodels export MODEL OUT --format onnx`")
    config_file = file.parent / CONFIG_FILE
    try:
        record = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{config_file} is missing: an ONNX file needs the config.json that `bigmodels export` "
                              "writes beside it (re-export the model)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{config_file} is unreadable ({e}); re-export the model") from None
    if not isinstance(record, dict) or record.get("format") != "bigmodels" or "onnx" not in record:
        raise CheckpointError(f"{config_file} is not the record of a bigmodels ONNX export (no 'onnx' entry); "
                              "re-export the model with `bigmodels export MODEL OUT --format onnx`")
    try:
        family = get_family(record["family"])
        config = from_dict(family.config_cls, record["config"], record["family"])
        task = record["task"]
        kind = KIND_OF_TASK[task]
    except (KeyError, ConfigError) as e:
        raise CheckpointError(f"{config_file}: the model record does not read back ({e}); re-export the "
                              "model") from None
    info = ModelInfo(record.get("model") or record["family"], record["family"], task, "onnx", str(file.parent),
                     dict(record.get("meta") or {}))
    cls = _CLASSES[kind]
    if kind == "encoder" and getattr(config, "head", None) == "encoder":
        cls = OnnxTokenEncoder
    try:
        return cls(file, config, info, record, threads=threads)
    except Exception as e:  # noqa: BLE001 (onnxruntime raises its own types for a damaged or foreign file)
        raise CheckpointError(f"{file} does not load in ONNX Runtime ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); re-export the model") from None
