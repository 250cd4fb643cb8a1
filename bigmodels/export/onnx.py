"""ONNX export of any registered model, checked in ONNX Runtime before anything is written.

:func:`export_onnx` traces a model with ``torch.onnx.export(..., dynamo=True)`` (``torch.export`` then
onnxscript; the legacy TorchScript exporter is not used) behind a small adapter that gives each kind of model
(``models/_contract.py``) fixed input and output names:

=================  ===============================================================  =========================
kind               inputs (dynamic axes)                                            outputs
=================  ===============================================================  =========================
vision             ``images`` (batch, C, H, W)                                       ``output`` (batch, classes)
decoder            ``input_ids`` (batch, seq)                                        ``output`` (batch, seq, V)
encoder            ``input_ids``, ``attention_mask`` [, ``token_type_ids``]          what the head gives
                   (batch, seq)                                                      (``output`` or
                                                                                    ``output_0``, ``output_1``)
encoder_decoder    ``input_ids``, ``attention_mask`` (batch, src),                   ``output`` (batch, tgt, V)
                   ``decoder_input_ids`` (batch, tgt)
=================  ===============================================================  =========================

A decoder is exported as a static full-sequence graph without a key/value cache: ids in, logits for every
position out (enough for scoring and classification-like use; token-by-token generation stays on PyTorch).
The Elman ``nn.RNN`` is unrolled over time by the exporter, so the RNN language models with ``cell="rnn"``
take exactly the exported sequence length (``seq_len``); LSTM and GRU become ONNX LSTM/GRU ops and take any.

The directory written holds ``model.onnx``, ``config.json`` (what ``bigmodels.save`` writes: the ModelInfo,
the config and the meta, with the preprocessing and class names, plus an ``onnx`` record of the graph's inputs,
outputs and parity), the tokenizer (``tokenizer.json``) when the model has one, and with ``int8=True`` an ONNX
Runtime dynamic-int8 copy ``model.int8.onnx`` (``int8="per-channel"``: one weight scale per output channel instead of
one per matrix). ``bigmodels.load(directory)`` reads it back as an :class:`~bigmodels.export.runner.OnnxModel`.

    >>> import bigmodels, tempfile
    >>> result = export_onnx(bigmodels.create_model("mlp_small"), tempfile.mkdtemp())  # doctest: +SKIP
    >>> result.parity <= 1e-4  # doctest: +SKIP
    True
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._files import atomic_write, check_output
from ..config import to_dict
from ..errors import ConfigError, ExportError
from ..models._contract import example_inputs, kind_of, model_info

__all__ = ["export_onnx", "OnnxExport", "ONNX_FILE", "INT8_FILE", "INT8_SCHEMES", "require_onnx"]

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
INT8_SCHEMES = ("per-tensor", "per-channel")  # how the int8 copy's weights are scaled: one scale a matrix / a column
CONFIG_FILE = "config.json"
# the files an export writes: a directory holding only these may be exported into again
_WRITES = {ONNX_FILE, INT8_FILE, CONFIG_FILE, "tokenizer.json", "tokenizer_config.json", "vocab.txt"}


def require_onnx() -> None:
    """Raise ConfigError naming the extra when onnx, onnxscript or onnxruntime is not installed."""
    for module in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            raise ConfigError(f"ONNX export and ONNX Runtime need {module}, which is not installed: "
                              'pip install "bigmodels[export]"') from None


# ---------------------------------------------------------------------------------------------- adapters


class _Vision(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        return self.model(images)


class _Decoder(_Vision):
    def forward(self, input_ids: torch.Tensor):  # type: ignore[override]
        return self.model(input_ids)


class _Encoder(_Vision):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):  # type: ignore[override]
        return self.model(input_ids, attention_mask=attention_mask)


class _EncoderWithTypes(_Vision):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,  # type: ignore[override]
                token_type_ids: torch.Tensor):
        return self.model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)


class _EncoderDecoder(_Vision):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,  # type: ignore[override]
                decoder_input_ids: torch.Tensor):
        return self.model(input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)


def _takes_types(model: nn.Module) -> bool:
    return "token_type_ids" in inspect.signature(model.forward).parameters


def _adapter(model: nn.Module, kind: str) -> nn.Module:
    if kind == "encoder":
        return _EncoderWithTypes(model) if _takes_types(model) else _Encoder(model)
    return {"vision": _Vision, "decoder": _Decoder, "encoder_decoder": _EncoderDecoder}[kind](model)


def _positions(model: nn.Module) -> int | None:
    cfg = model.config
    n = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "block_size", None)
    return n if isinstance(n, int) and n > 0 else None


def _inputs(model: nn.Module, kind: str, batch: int, seq_len: int, seed: int) -> dict[str, torch.Tensor]:
    """The adapter's inputs (by name) for a batch: padded rows in the masks, so the mask really is read."""
    limit = _positions(model)
    T = min(seq_len, limit) if limit else seq_len
    x = example_inputs(model, batch, seq_len=T, seed=seed)
    if kind == "vision":
        return {"images": x}
    if kind == "decoder":
        return {"input_ids": x}
    lengths = torch.tensor([T - (i % 3) for i in range(batch)])  # 0, 1 or 2 padding slots per row
    mask = (torch.arange(T)[None] < lengths[:, None]).to(torch.int64)  # (B, T)
    if kind == "encoder":
        feeds = {"input_ids": x, "attention_mask": mask}
        if _takes_types(model):
            feeds["token_type_ids"] = torch.zeros_like(x)
        return feeds
    return {**x, "attention_mask": mask}


def _dynamic_shapes(model: nn.Module, kind: str) -> dict[str, dict[int, Any]]:
    B = torch.export.Dim("batch")
    if kind == "vision":
        return {"images": {0: B}}
    limit = _positions(model)
    T = torch.export.Dim("seq", min=2, max=limit) if limit else torch.export.Dim("seq", min=2)
    if kind in ("decoder", "encoder"):
        names = ["input_ids"] + (["attention_mask"] if kind == "encoder" else [])
        names += ["token_type_ids"] if kind == "encoder" and _takes_types(model) else []
        return {n: {0: B, 1: T} for n in names}
    S = torch.export.Dim("src", min=2)
    return {"input_ids": {0: B, 1: S}, "attention_mask": {0: B, 1: S}, "decoder_input_ids": {0: B, 1: T}}


def _flat(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)) and all(isinstance(o, torch.Tensor) for o in out):
        return list(out)
    raise ExportError(f"the model returns a {type(out).__name__}; ONNX export takes a model that returns a tensor "
                      "or a tuple of tensors")


# ---------------------------------------------------------------------------------------------- the result


@dataclass
class OnnxExport:
    """What :func:`export_onnx` wrote and measured. ``parity``: max |ONNX Runtime - PyTorch| over the outputs at a
    batch (and length) other than the export's; for vision models relative to the largest |logit|.
    ``int8_parity``: the same for the dynamic-int8 copy, ``int8_scheme`` how its weights were scaled (one of
    :data:`INT8_SCHEMES`; both None without ``int8``)."""

    directory: Path
    path: Path
    kind: str
    inputs: list[str]
    outputs: list[str]
    dynamic_axes: dict[str, dict[str, str]]
    parity: float
    checked_at: dict[str, list[int]]
    seconds: float
    int8_path: Path | None = None
    int8_parity: float | None = None
    int8_scheme: str | None = None
    sizes: dict[str, int] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The JSON record kept in config.json under ``onnx``."""
        rec = asdict(self)
        for key in ("directory", "path", "int8_path"):
            rec.pop(key)
        rec["file"], rec["int8_file"] = self.path.name, self.int8_path.name if self.int8_path else None
        return rec


# ---------------------------------------------------------------------------------------------- export


def _check_directory(out: Path) -> None:
    check_output(out, "the ONNX output", directory=True)
    if out.is_dir():
        others = sorted(p.name for p in out.iterdir() if p.name not in _WRITES and not p.name.startswith("."))
        if others:
            raise ConfigError(f"{out} already holds {', '.join(others[:5])}: an ONNX export writes {ONNX_FILE} and "
                              f"{CONFIG_FILE} there; give a new or empty directory (or a previous export's)")


def _meta(model: nn.Module) -> dict[str, Any]:
    """The model's meta as JSON, with the class names of a Hugging Face config's id2label when it has none."""
    info = model_info(model)
    meta = {}
    for key, value in info.meta.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        meta[str(key)] = value
    if "class_names" not in meta and info.path and (Path(info.path) / CONFIG_FILE).is_file():
        try:
            id2label = json.loads((Path(info.path) / CONFIG_FILE).read_text(encoding="utf-8")).get("id2label")
            if isinstance(id2label, dict) and id2label:
                meta["class_names"] = [str(id2label[str(i)]) for i in range(len(id2label))]
        except (OSError, ValueError, KeyError, AttributeError):
            pass
    return meta


def _session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _static_axes(session, feeds: dict[str, torch.Tensor]) -> dict[str, dict[int, int]]:
    """The axes the exporter fixed (an int where a name was asked for): input -> {axis: size}."""
    fixed = {}
    for i in session.get_inputs():
        axes = {a: d for a, d in enumerate(i.shape) if isinstance(d, int) and a < 2 and i.name in feeds}
        axes = {a: d for a, d in axes.items() if not (i.name == "images" and a > 0)}
        if axes:
            fixed[i.name] = axes
    return fixed


def _parity(session, adapter: nn.Module, feeds: dict[str, torch.Tensor], relative: bool) -> float:
    with torch.no_grad():
        ref = _flat(adapter(**feeds))
    got = session.run(None, {k: v.numpy() for k, v in feeds.items()})
    worst = 0.0
    for r, g in zip(ref, got, strict=True):
        if tuple(r.shape) != tuple(g.shape):
            raise ExportError(f"ONNX Runtime gave an output of shape {tuple(g.shape)} where PyTorch gives "
                              f"{tuple(r.shape)}; the export is wrong for this model")
        diff = float((torch.from_numpy(g).float() - r.float()).abs().max()) if r.numel() else 0.0
        if relative:
            diff /= max(float(r.abs().max()), 1e-12)
        worst = max(worst, diff)
    return worst


def export_onnx(model: nn.Module, out: str | Path, *, int8: bool | str = False, tokenizer: Any = None, batch: int = 2,
                seq_len: int = 16, atol: float = 1e-4, opset: int | None = None) -> OnnxExport:
    """Export ``model`` (any registered kind) to ``out/model.onnx`` with dynamic batch (and sequence) axes,
    check it in ONNX Runtime at another batch and length, and write the sidecar files beside it.

    ``batch``/``seq_len``: the shapes traced; the check runs at ``batch + 1`` and ``seq_len - 5`` tokens (a
    different sequence length, within the model's positions) and raises :class:`~bigmodels.errors.ExportError`
    when the largest difference exceeds ``atol`` (for vision, relative to the largest logit). ``int8``: also
    write ONNX Runtime's dynamic int8 quantization (``model.int8.onnx``; weights int8, activations quantized
    on the fly), whose own difference is reported, not bounded: ``True`` or ``"per-tensor"`` scales each weight
    matrix as a whole (ONNX Runtime's default), ``"per-channel"`` each output channel on its own, closer to
    float32 where a matrix's output channels differ in size (all-MiniLM-L6-v2 on the STS-B test sentences: least
    cosine to float32 0.958 instead of 0.817, at about the same speed, though a lower STS-B Spearman, 0.8168
    against 0.8188; ``benchmarks/embed_backends.py``). ``tokenizer``: written beside the model (default: the one
    saved with it). The model is exported in eval mode and left in the mode it had.

    >>> import bigmodels, tempfile
    >>> r = export_onnx(bigmodels.create_model("mlp_small"), tempfile.mkdtemp(), int8=True)  # doctest: +SKIP
    >>> r.parity < 1e-4, r.int8_path.stat().st_size < r.path.stat().st_size  # doctest: +SKIP
    (True, True)
    """
    require_onnx()
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    if not isinstance(model, nn.Module):
        raise ConfigError(f"export_onnx takes a PyTorch model (an nn.Module), got {type(model).__name__}")
    if getattr(model, "backend", None) == "onnxruntime":
        raise ConfigError("this model is an ONNX export already; export the PyTorch model it came from")
    scheme = _int8_scheme(int8)
    info, kind = model_info(model), kind_of(model)
    out = Path(out)
    _check_directory(out)
    for name, value, least in (("batch", batch, 1), ("seq_len", seq_len, 8)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"{name}={value!r} must be a whole number >= {least}")
    was_training = model.training
    model.eval()
    adapter = _adapter(model, kind).eval()
    feeds = _inputs(model, kind, batch, seq_len, seed=0)
    start = time.perf_counter()
    try:
        with torch.no_grad():
            n_out = len(_flat(adapter(**feeds)))
        names = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
        program = _trace(adapter, feeds, _dynamic_shapes(model, kind), names, info.name, opset)
        out.mkdir(parents=True, exist_ok=True)
        path = out / ONNX_FILE
        atomic_write(path, lambda p: program.save(str(p)))
        session = _session(path)
        fixed = _static_axes(session, feeds)
        if fixed:
            log.warning("%s: the exporter fixed %s (nn.RNN is unrolled over time); this export takes exactly those "
                        "sizes", info.name, fixed)
        check_len = seq_len if any(1 in axes for axes in fixed.values()) else max(seq_len - 5, 3)
        check = _inputs(model, kind, batch + 1, check_len, seed=1)
        relative = kind == "vision"
        parity = _parity(session, adapter, check, relative)
        if not parity <= atol:
            path.unlink(missing_ok=True)
            raise ExportError(f"{info.name}: ONNX Runtime differs from PyTorch by {parity:.3g} "
                              f"{'(relative to the largest logit) ' if relative else ''}> atol={atol}; the export "
                              "is not faithful (file removed); report it with the model's config")
        result = OnnxExport(
            directory=out, path=path, kind=kind, inputs=[i.name for i in session.get_inputs()],
            outputs=[o.name for o in session.get_outputs()],
            dynamic_axes={i.name: {str(a): d for a, d in enumerate(i.shape) if isinstance(d, str)}
                          for i in session.get_inputs()},
            parity=parity, checked_at={k: list(v.shape) for k, v in check.items()},
            seconds=round(time.perf_counter() - start, 2), sizes={ONNX_FILE: path.stat().st_size})
        if scheme is not None:
            result.int8_path = _quantize(path, out / INT8_FILE, per_channel=scheme == "per-channel")
            result.int8_scheme = scheme
            result.int8_parity = _parity(_session(result.int8_path), adapter, check, relative)
            result.sizes[INT8_FILE] = result.int8_path.stat().st_size
        elif (out / INT8_FILE).exists():
            (out / INT8_FILE).unlink()  # a previous export's copy would not match this model
    finally:
        model.train(was_training)
    _write_sidecars(model, out, result, tokenizer)
    log.info("exported %s to %s (%s, parity %.2g%s)", info.name, path, kind, parity,
             f", int8 ({scheme}) parity {result.int8_parity:.2g}" if scheme else "")
    return result


def _trace(adapter: nn.Module, feeds: dict[str, torch.Tensor], dynamic: dict, outputs: list[str], name: str,
           opset: int | None):
    """torch.onnx.export with dynamo=True; a model it cannot trace is an ExportError naming the construct."""
    import warnings

    kwargs = {"opset_version": opset} if opset else {}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracing chatter
            return torch.onnx.export(adapter, (), kwargs=feeds, dynamic_shapes=dynamic, dynamo=True, verbose=False,
                                     input_names=list(feeds), output_names=outputs, report=False, **kwargs)
    except Exception as e:  # noqa: BLE001 (torch.export and onnxscript raise many types; all mean "cannot export")
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        cause = next((ln for ln in lines if ln.startswith("<class")), lines[0] if lines else type(e).__name__)
        where = next((ln for ln in lines if ln.startswith("File ")), "")
        raise ExportError(f"{name} cannot be exported to ONNX by torch.export ({type(e).__name__}: {cause[:300]}"
                          f"{'; at ' + where[:200] if where else ''}); its forward must be traceable without "
                          "Python branches on tensor values or conversions to numpy/Python numbers") from None


def _int8_scheme(int8: Any) -> str | None:
    """``export_onnx``'s ``int8`` as one of :data:`INT8_SCHEMES`, or None for no int8 copy.

    >>> _int8_scheme(False), _int8_scheme(True), _int8_scheme("per-channel")
    (None, 'per-tensor', 'per-channel')
    """
    if int8 is None or int8 is False:
        return None
    if int8 is True:
        return "per-tensor"
    if isinstance(int8, str) and int8 in INT8_SCHEMES:
        return int8
    raise ConfigError(f"int8={int8!r} is not an int8 export; use False, True (= 'per-tensor') or one of "
                      f"{', '.join(repr(s) for s in INT8_SCHEMES)}")


def _quantize(source: Path, target: Path, *, per_channel: bool = False) -> Path:
    """ONNX Runtime's dynamic int8 quantization (weights int8, one scale a matrix or, ``per_channel``, one an
    output channel; activations quantized at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    quiet = _DropPreprocessHint()
    root.addFilter(quiet)  # its advice to run shape pre-processing, logged on the root logger each time
    try:
        atomic_write(target, lambda p: quantize_dynamic(str(source), str(p), weight_type=QuantType.QInt8,
                                                             per_channel=per_channel))
    finally:
        root.removeFilter(quiet)
    return target


class _DropPreprocessHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Please consider to run pre-processing")


def _write_sidecars(model: nn.Module, out: Path, result: OnnxExport, tokenizer: Any) -> None:
    from ..interop import source_tokenizer, write_tokenizer
    from ..io import FORMAT_VERSION

    info = model_info(model)
    record = {"format": "bigmodels", "format_version": FORMAT_VERSION, "backend": "onnxruntime",
              "model": info.name, "family": info.family, "task": info.task, "config": to_dict(model.config),
              "meta": _meta(model), "onnx": result.record()}
    if isinstance(tokenizer, str | Path):
        from ..data.tokenizers import load_tokenizer

        tokenizer = load_tokenizer(tokenizer)
    tokenizer = tokenizer if tokenizer is not None else source_tokenizer(model)
    if tokenizer is not None:
        write_tokenizer(tokenizer, out)
    atomic_write(out / CONFIG_FILE, lambda p: p.write_text(json.dumps(record, indent=2) + "\n"))
