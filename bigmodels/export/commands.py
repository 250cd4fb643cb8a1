"""`bigmodels export`: write a model as ONNX (checked in ONNX Runtime), a Hugging Face or a bigmodels directory.

Each parameter's ``Annotated`` text is its ``--help`` (see :mod:`bigmodels.cli`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

__all__ = ["export"]

FORMATS = ("onnx", "hf", "bigmodels")


def export(
    source: Annotated[str, "the model to export: a bigmodels or Hugging Face directory, a training run, a hub name, "
                           "or a torchvision state dict (.pth) with --model"],
    out: Annotated[str, "the directory to write (new, empty, or a previous export's)"],
    *,
    format: Annotated[str, "onnx (model.onnx + config.json + tokenizer, checked in ONNX Runtime), hf (Hugging "
                           "Face) or bigmodels"] = "onnx",
    int8: Annotated[bool, "onnx: also write ONNX Runtime's dynamic int8 quantization (model.int8.onnx)"] = False,
    per_channel: Annotated[bool, "with --int8: one weight scale per output channel instead of one per matrix "
                                 "(closer to float32 where a matrix's output channels differ in size)"] = False,
    model: Annotated[str | None, "for a plain state dict: the registered architecture it holds, e.g. resnet50"] = None,
) -> int:
    """Export a model: ONNX for ONNX Runtime (dynamic batch and sequence axes), or a Hugging Face / bigmodels directory.

    The ONNX export is checked in ONNX Runtime against PyTorch at a batch and length other than the traced ones
    before it is kept; the directory then loads with bigmodels.load(OUT) and runs in
    bigmodels.pipeline(task, OUT, backend="onnxruntime"). hf and bigmodels are `bigmodels convert`.

    Example: bigmodels export runs/sst2 sst2_onnx --format onnx --int8 --per-channel
    """
    from ..convert import convert
    from ..errors import ConfigError

    if format not in FORMATS:
        raise ConfigError(f"--format {format!r} is not an export format; use one of {', '.join(FORMATS)}")
    if format != "onnx":
        if int8 or per_channel:
            raise ConfigError(f"--{'int8' if int8 else 'per-channel'} applies to --format onnx; drop it for "
                              f"--format {format}")
        return convert(source, out, format=format, model=model)
    if per_channel and not int8:
        raise ConfigError("--per-channel chooses how the int8 copy's weights are scaled; add --int8 (or drop "
                          "--per-channel)")
    from ..convert import _tokenizer
    from ..io import load, resolve_checkpoint
    from .onnx import _check_directory, export_onnx, require_onnx

    require_onnx()
    _check_directory(Path(out))  # before the model loads: a file there, another model's files
    if model is not None and not model.strip():
        raise ConfigError("--model is empty; name the registered architecture of the state dict, e.g. --model "
                          "resnet50 (`bigmodels models` lists them), or leave --model out for a saved model")
    if model is not None:
        loaded, tokenizer = load(source, model=model), None
    else:
        directory = resolve_checkpoint(source)
        loaded, tokenizer = load(directory), _tokenizer(directory)
    result = export_onnx(loaded, out, int8="per-channel" if per_channel else int8, tokenizer=tokenizer)
    print(f"{source} -> {result.path} ({result.kind}; inputs {', '.join(result.inputs)}; ONNX Runtime vs PyTorch "
          f"max diff {result.parity:.2g} at {result.checked_at})")
    if result.int8_path is not None:
        print(f"int8 ({result.int8_scheme}): {result.int8_path} ({result.sizes[result.int8_path.name] / 1e6:.2f} MB vs "
              f"{result.sizes[result.path.name] / 1e6:.2f} MB; max diff {result.int8_parity:.2g})")
    return 0
