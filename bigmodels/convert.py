"""`bigmodels convert`: read a model in any format ``bigmodels.load`` reads, write it in another.

Format plumbing on top of :mod:`bigmodels.io` (which finds the interop adapter for each format), so it sits
beside ``io`` rather than inside ``interop``. Each command parameter's ``Annotated`` text is its ``--help``.
"""

from __future__ import annotations

from typing import Annotated

__all__ = ["convert"]


def convert(
    source: Annotated[str, "the model to read: a bigmodels or Hugging Face directory, a training run, a hub name, "
                           "or a torchvision state dict (.pth) with --model"],
    target: Annotated[str, "the directory to write"],
    *,
    format: Annotated[str, "the format to write: hf (Hugging Face, loads in transformers) or bigmodels"] = "hf",
    model: Annotated[str | None, "for a plain state dict: the registered architecture it holds, e.g. "
                                 "resnet50"] = None,
) -> int:
    """Convert a model to another format: a Hugging Face (hf) or a bigmodels directory.

    It reads a bigmodels or Hugging Face directory, a training run, a hub name, or a torchvision state dict with
    --model NAME (e.g. --model resnet50); the tokenizer saved with the model travels with it.

    Example: bigmodels convert runs/gpt gpt_hf --format hf
    """
    from ._files import check_output
    from .errors import ConfigError
    from .io import load, resolve_checkpoint, save

    if format not in ("hf", "bigmodels"):
        raise ConfigError(f"--format {format!r} is not a format convert writes; use hf or bigmodels")
    check_output(target, "the target", directory=True)  # before the model loads: a file there, an unwritable folder
    if model is not None and not model.strip():
        raise ConfigError("--model is empty; name the registered architecture of the state dict, e.g. --model "
                          "resnet50 (`bigmodels models` lists them), or leave --model out for a saved model")
    if model is not None:
        loaded, tokenizer, read = load(source, model=model), None, f"{source} ({model})"
    else:
        directory = resolve_checkpoint(source)
        loaded, tokenizer, read = load(directory), _tokenizer(directory), str(directory)
    try:
        save(loaded, target, format=format, tokenizer=tokenizer)
    except OSError as e:  # the disk filled up, the folder went away while writing, ...
        raise ConfigError(f"cannot write {target} ({e.strerror or e}); give a directory you can write") from None
    print(f"{read} -> {target} ({format})")
    return 0


def _tokenizer(directory):
    """The tokenizer saved with the model, or None; a damaged tokenizer file is an error, not a model without one."""
    from .data.tokenizers import load_tokenizer
    from .io import saved_tokenizer

    if any((directory / name).is_file() for name in ("tokenizer.json", "vocab.txt")):
        return load_tokenizer(directory)
    return saved_tokenizer(directory)  # a hub directory's other tokenizer files
