"""The inference commands of the CLI: `predict`, `generate`, `embed` and `translate`, each running a pipeline.

Each is a plain function whose signature is its command line (see :mod:`bigmodels.cli`): positional
parameters are arguments, keyword-only ones ``--options``, and the first ``Annotated`` string of a parameter is
its help. A user's mistake raises a :class:`~bigmodels.errors.BigModelsError`, which the CLI prints as one line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

from torch import nn

from ..errors import BigModelsError, ConfigError
from .pipelines import model_task, pipeline

__all__ = ["predict", "generate", "embed", "translate"]


def _open(checkpoint: str, architecture: str | None = None) -> tuple[nn.Module, Path | None]:
    """(the model, the directory it was read from; None for a plain state dict read with ``architecture``)."""
    from ..io import load, resolve_checkpoint

    if architecture is not None:  # a plain state dict: the architecture is named apart
        if not architecture.strip():
            raise ConfigError("--model is empty; name the registered architecture of the state dict, e.g. --model "
                              "resnet50 (`bigmodels models` lists them), or leave --model out for a saved model")
        return load(checkpoint, model=architecture), None
    directory = resolve_checkpoint(checkpoint)
    return load(directory), directory


def _tokenizer(directory: Path | None) -> Path | None:
    """The directory to read the model's tokenizer from, when it holds one."""
    if directory is not None and ((directory / "tokenizer.json").is_file() or (directory / "vocab.txt").is_file()):
        return directory
    return None


def _whole(name: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise ConfigError(f"--{name.replace('_', '-')} {value} must be >= {minimum}")


def predict(
    checkpoint: Annotated[str, "a saved model, training run or Hugging Face directory (or a state dict with --model)"],
    *inputs: Annotated[str, "image files to classify, or texts for a text model (a prompt for a language model)"],
    top_k: Annotated[int, "how many classes (or fill-mask tokens) to print for each input"] = 5,
    max_new_tokens: Annotated[int, "language models: how many tokens to add to the prompt"] = 200,
    temperature: Annotated[float, "language models: sampling temperature (0 = greedy)"] = 0.8,
    seed: Annotated[int, "language models: random seed of the sampling"] = 0,
    model: Annotated[str | None, "the registered architecture of a plain state dict, e.g. resnet50"] = None,
) -> int:
    """Classify image files (top-k classes) or continue a text prompt with a saved model.

    With --model, CHECKPOINT may be a torchvision state dict such as resnet50-11ad3fa6.pth. Text classifiers
    print the top-k labels of each text; NER and fill-mask models print their predictions as JSON lines."""
    from .predict import classify_images

    if not inputs:
        raise ConfigError("give at least one input: image file paths, or a text prompt for a language model")
    _whole("top_k", top_k, 1)
    _whole("max_new_tokens", max_new_tokens, 0)
    net, directory = _open(checkpoint, model)
    task = model_task(net)
    if task == "translation":
        raise ConfigError(f"{checkpoint} is a translation model; translate with `bigmodels translate {checkpoint} "
                          "SENTENCE ...`")
    if task == "sentence_embedding":
        raise ConfigError(f"{checkpoint} is a sentence-embedding model; embed texts with `bigmodels embed "
                          f"{checkpoint} TEXT ...`")
    tok = _tokenizer(directory)
    if task == "language_modeling":
        pipe = pipeline("text-generation", net, tokenizer=tok, max_new_tokens=max_new_tokens,
                        temperature=temperature, seed=seed)
        for prompt in inputs:
            print(pipe(prompt)[0]["generated_text"])
        return 0
    if task == "sequence_classification":
        pipe = pipeline("text-classification", net, tokenizer=tok, top_k=top_k)
        for text, ranked in zip(inputs, pipe(list(inputs)), strict=True):
            ranked = [ranked] if isinstance(ranked, dict) else ranked
            print(f"{text}: " + ", ".join(f"{r['label']} {r['score']:.3f}" for r in ranked))
        return 0
    if task == "token_classification":
        pipe = pipeline("token-classification", net, tokenizer=tok)
        for text, entities in zip(inputs, pipe(list(inputs)), strict=True):
            print(json.dumps({"text": text, "entities": entities}, ensure_ascii=False))
        return 0
    if task == "masked_language_modeling":
        pipe = pipeline("fill-mask", net, tokenizer=tok, top_k=top_k)
        for text, filled in zip(inputs, pipe(list(inputs)), strict=True):
            print(json.dumps({"text": text, "predictions": filled}, ensure_ascii=False))
        return 0
    if task != "image_classification":
        raise ConfigError(f"{checkpoint} is a {task} model, which `predict` does not run yet; it predicts with "
                          "image classifiers, language models, text classifiers, NER and fill-mask models")
    failed = 0
    for path, ranked in classify_images(net, [Path(p) for p in inputs], top_k=top_k):
        if isinstance(ranked, BigModelsError):  # one unreadable file does not stop the others
            print(f"error: {ranked}", file=sys.stderr)
            failed += 1
        else:
            print(f"{path}: " + ", ".join(f"{label} {p:.3f}" for label, p in ranked))
    return 2 if failed else 0


def generate(
    checkpoint: Annotated[str, "a language model: a saved model, training run or Hugging Face directory"],
    *prompts: Annotated[str, "text to continue"],
    max_new_tokens: Annotated[int, "how many tokens to add to each prompt"] = 100,
    temperature: Annotated[float, "sampling temperature (0 = greedy)"] = 0.8,
    top_k: Annotated[int | None, "sample only among the k likeliest tokens"] = None,
    top_p: Annotated[float | None, "sample only among the likeliest tokens whose probabilities add up to p"] = None,
    repetition_penalty: Annotated[float, "divide the logits of tokens already in the text by this (1 = none)"] = 1.0,
    stop: Annotated[str | None, "end a continuation once its text contains this string"] = None,
    seed: Annotated[int, "random seed of the sampling"] = 0,
) -> int:
    """Continue text prompts with a language model, streaming the new text to the terminal as it comes."""
    net, directory = _open(checkpoint)
    task = model_task(net)
    if task != "language_modeling":
        raise ConfigError(f"{directory} is a {task} model; `generate` needs a language model")
    if not prompts:
        raise ConfigError("give a prompt to continue, e.g. bigmodels generate RUN 'To be'")
    # options a model cannot honour (a recurrent model's repetition penalty, ...) are refused here, not ignored
    pipe = pipeline("text-generation", net, tokenizer=_tokenizer(directory), max_new_tokens=max_new_tokens,
                    temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
                    stop=stop, seed=seed)
    for prompt in prompts:
        pieces = pipe.stream(prompt)  # checks the prompt and the options before the first piece
        sys.stdout.write(prompt)
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    return 0


# what `embed --out` writes, by the file's suffix
EMBED_FORMATS = {".npy": "an (N, H) float32 array", ".json": "a JSON list of {text, embedding}",
                 ".jsonl": "one JSON line per text"}


def embed(
    checkpoint: Annotated[str, "a sentence-embedding model: a saved or sentence-transformers directory, hub name"],
    *texts: Annotated[str, "texts to embed"],
    file: Annotated[str | None, "a UTF-8 text file, one text a line (after any TEXT arguments)"] = None,
    out: Annotated[str | None, "write the vectors to this file instead of the terminal: .npy (an (N, H) array), "
                               ".json (a JSON list) or .jsonl (one JSON line per text)"] = None,
    batch_size: Annotated[int, "texts per forward pass"] = 64,
    max_length: Annotated[int | None, "tokens kept of each text, special tokens included (default: 256, or the "
                                      "model's context where shorter)"] = None,
) -> int:
    """Sentence embeddings: texts (or a file, one text a line) -> vectors, as JSON lines, or a .npy / .jsonl file.

    Example: bigmodels embed sentence-transformers/all-MiniLM-L6-v2 "A man plays a guitar." --out vectors.npy
    """
    from .._files import atomic_write, check_output

    _whole("batch_size", batch_size, 1)
    if max_length is not None:
        _whole("max_length", max_length, 2)
    if out is not None:  # before the model loads: a bad path fails in a second, not after the work
        check_output(out, "--out")
        suffix = Path(out).suffix.lower()
        if suffix not in EMBED_FORMATS:
            raise ConfigError(f"--out {out}: unknown suffix {suffix or '(none)'!r}; end the file name with "
                              + ", ".join(f"{s} ({what})" for s, what in EMBED_FORMATS.items()))
    items = list(texts)
    if file is not None:
        try:
            items += Path(file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read --file {file!r} ({e}); give a UTF-8 text file, one text a line") from None
    if not items:
        raise ConfigError("give texts to embed, or --file with one text a line")
    pipe = pipeline("feature-extraction", checkpoint, batch_size=batch_size, max_length=max_length)
    vectors = pipe.embed(items)  # (N, H); refuses a model without sentence vectors
    if out is None:
        for line in _embedding_lines(items, vectors):
            print(line)
        return 0
    suffix = Path(out).suffix.lower()
    if suffix == ".npy":
        import numpy as np

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.save would add .npy to the temporary name
                np.save(f, vectors.numpy())
    elif suffix == ".json":
        def write(tmp: Path) -> None:
            tmp.write_text("[\n" + ",\n".join(_embedding_lines(items, vectors)) + "\n]\n", encoding="utf-8")
    else:
        def write(tmp: Path) -> None:
            tmp.write_text("".join(f"{line}\n" for line in _embedding_lines(items, vectors)), encoding="utf-8")
    try:
        atomic_write(out, write)  # a failed write leaves any earlier file whole
    except OSError as e:
        raise ConfigError(f"cannot write --out {out} ({e.strerror or e}); give a writable file path") from None
    print(f"{len(items)} vectors of {vectors.shape[1]} dimensions -> {out}")
    return 0


def _embedding_lines(items: list[str], vectors) -> list[str]:
    return [json.dumps({"text": text, "embedding": [round(v, 6) for v in vector]})
            for text, vector in zip(items, vectors.tolist(), strict=True)]


def translate(
    checkpoint: Annotated[str, "a translation model: a saved model or training run"],
    *sentences: Annotated[str, "sentences to translate"],
    file: Annotated[str | None, "a text file (plain or .gz), one sentence a line"] = None,
    out: Annotated[str | None, "write the translations to this file, one a line"] = None,
    beams: Annotated[int, "beam width of the search (1 = greedy decoding)"] = 4,
    max_new_tokens: Annotated[int, "the longest translation, in tokens"] = 128,
    batch_size: Annotated[int, "sentences decoded together"] = 64,
) -> int:
    """Translate sentences (or --file, one a line, plain or .gz) with a translation model.

    One translation per line, to the terminal or --out; an empty input line gives an empty output line."""
    from .._files import atomic_write, check_output
    from ..data.parallel import read_lines

    if beams < 1 or max_new_tokens < 1 or batch_size < 1:
        raise ConfigError(f"--beams {beams}, --max-new-tokens {max_new_tokens} and --batch-size {batch_size} must "
                          "all be >= 1 (--beams 1 is greedy decoding)")
    if sentences and file is not None:
        raise ConfigError(f"give sentences or --file, not both (got {len(sentences)} sentences and --file {file}); "
                          "put them all in the file")
    if file is not None:
        try:
            items = read_lines(file)
        except BigModelsError as e:
            raise ConfigError(f"--file: {e}") from None
    else:
        items = list(sentences)
    if not items:
        raise ConfigError("give sentences to translate, or --file with one sentence a line")
    if out is not None:  # before the model loads and decodes
        check_output(out, "--out")
    net, directory = _open(checkpoint)
    task = model_task(net)
    if task != "translation":
        raise ConfigError(f"{directory} is a {task} model; `translate` needs a translation model "
                          "(e.g. one trained with recipes/multi30k_transformer.yaml)")
    tok = _tokenizer(directory)
    if tok is None:
        raise ConfigError(f"{directory} has no tokenizer.json; translation needs the tokenizer the model was "
                          "trained with")
    pipe = pipeline("translation", net, tokenizer=tok, batch_size=batch_size, num_beams=beams,
                    max_new_tokens=max_new_tokens)
    lines = [r["translation_text"] for r in pipe(items)]
    if out is None:
        for line in lines:
            print(line)
        return 0
    try:  # a failed write leaves any earlier file whole
        atomic_write(out, lambda tmp: tmp.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot write --out {out} ({e.strerror or e}); give a writable file path") from None
    print(f"{len(lines)} translations -> {out}")
    return 0
