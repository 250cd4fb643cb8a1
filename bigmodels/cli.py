"""The `bigmodels` command line: a table of commands, each a plain function whose signature is its schema.

Positional parameters become positional arguments, keyword-only parameters become ``--options`` (a bool
becomes a flag), the first docstring line is the help. ``*overrides`` collects dotted config overrides
(``--optim.lr=3e-4`` or ``optim.lr=3e-4``). Anything a user gets wrong ends in one line naming the problem
and the fix, and a non-zero exit code: 2 for bad input, 130 for Ctrl-C, 1 for a bug (with a hint to get
the traceback).
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import sys
import typing
from pathlib import Path

from .errors import BigModelsError, ConfigError

log = logging.getLogger("bigmodels")

# ---------------------------------------------------------------------------------------------- commands


def models(*, pattern: str | None = None, task: str | None = None) -> int:
    """List the registered models with their family, task and parameter count."""
    import torch

    from .registry import create_model, get_spec, list_models

    names = list_models(pattern, task=task)
    if not names:
        raise ConfigError(f"no model matches pattern={pattern!r} task={task!r}; run `bigmodels models` for all")
    rows = []
    for name in names:
        spec = get_spec(name)
        with torch.device("meta"):  # counts parameters without allocating them
            n = sum(p.numel() for p in create_model(name).parameters())
        rows.append((name, spec.family, spec.task, f"{n:,}", spec.description))
    _print_table(("model", "family", "task", "params", "description"), rows)
    return 0


def train(recipe: str | None = None, *overrides: str, quiet: bool = False) -> int:
    """Train a model: a YAML recipe and/or dotted overrides (e.g. model=cnn_mnist data.name=mnist data.path=DIR)."""
    from .config import resolve_run_config
    from .train import Trainer

    cfg = resolve_run_config(recipe, list(overrides))
    with Trainer(cfg) as trainer:
        summary = trainer.fit()
        if summary["status"] != "interrupted" and trainer.data.test is not None:
            trainer.load_checkpoint(summary["best_checkpoint"] or summary["last_checkpoint"])
            summary["test"] = trainer.evaluate("test")
    if trainer.dist.is_main:
        out = Path(cfg.train.out_dir) / "summary.json"
        out.write_text(json.dumps(summary, indent=2) + "\n")
        if not quiet:
            print(_summary_text(summary, out))
    return 130 if summary["status"] == "interrupted" else 0


def evaluate(checkpoint: str, *, data: str | None = None, data_path: str | None = None, split: str | None = None,
             batch_size: int = 256, max_length: int = 128, beams: int | None = None, max_new_tokens: int = 128) -> int:
    """Evaluate a model (a directory, training run or hub name) on a data split: by default the data it was
    trained on; stsb (Spearman of cosine similarities), sst2, conll2003 (entity F1), text/pydoc (perplexity),
    translation (sacreBLEU of beam-search translations, --beams 4 by default, plus teacher-forced loss)."""
    from .config import DataConfig, from_dict
    from .data.bundle import PARALLEL_DATASETS
    from .io import load, resolve_checkpoint, saved_tokenizer

    directory = resolve_checkpoint(checkpoint)
    model = load(directory)
    trained = _trained_data_config(directory)
    base = _plain(trained) if trained is not None and data in (None, trained.name) else {}
    data_cfg = from_dict(DataConfig, {**base, **({"name": data} if data else {}),
                                      **({"path": data_path} if data_path else {})})
    if data_cfg.name not in PARALLEL_DATASETS and beams is not None:
        raise ConfigError(f"--beams sets the beam search of translation, not of data {data_cfg.name!r}; drop it")
    if data_cfg.name == "stsb":
        metrics = _evaluate_sts(model, directory, data_cfg.path, split or "test", batch_size)
        split = split or "test"
    elif data_cfg.name in PARALLEL_DATASETS:
        split = split or "test"
        metrics = _evaluate_translation(model, directory, data_cfg, split, batch_size=batch_size,
                                        max_length=max_length, beams=4 if beams is None else beams,
                                        max_new_tokens=max_new_tokens)
    else:
        from .data import build_data
        from .evaluate import evaluate_model
        from .tasks import get_task

        bundle = build_data(data_cfg.name, data_cfg.path, val_fraction=data_cfg.val_fraction,
                            block_size=data_cfg.block_size, img_size=data_cfg.img_size, seed=data_cfg.seed,
                            tokenizer=saved_tokenizer(directory), max_length=max_length)
        available = [s for s in ("train", "val", "test") if getattr(bundle, s) is not None]
        split = split or ("test" if "test" in available else "val")
        if split not in available:
            raise ConfigError(
                f"split {split!r} is not available for data {data_cfg.name!r}; "
                f"use --split with one of {', '.join(available)}"
            )
        if model.task != bundle.task:
            raise ConfigError(f"{directory} is a {model.task} model but data {data_cfg.name!r} is {bundle.task}")
        metrics = evaluate_model(model, getattr(bundle, split), get_task(bundle.task, bundle.meta),
                                 transform=bundle.eval_transform, batch_size=batch_size)
    print(json.dumps({"checkpoint": str(directory), "data": data_cfg.name, "split": split, **metrics}, indent=2))
    return 0


def _evaluate_sts(model, directory: Path, path: str | None, split: str, batch_size: int) -> dict:
    from .data.nlp import read_stsb
    from .data.tokenizers import load_tokenizer
    from .evaluate.sts import evaluate_sts

    if path is None:
        raise ConfigError("--data stsb needs --data-path: the folder with stsb-en-test.csv (e.g. ../shared/data/stsb)")
    if getattr(model.config, "head", None) != "embedding":
        raise ConfigError(f"{directory} is not a sentence-embedding model; STS-B scores embeddings by cosine")
    return evaluate_sts(model, load_tokenizer(directory), read_stsb(path, split), batch_size=min(batch_size, 64))


def _evaluate_translation(model, directory: Path, data_cfg, split: str, *, batch_size: int, max_length: int,
                          beams: int, max_new_tokens: int) -> dict:
    """Teacher-forced loss / perplexity / token accuracy and sacreBLEU of the translations of one split, read
    on its own (as STS-B is) with the model's saved tokenizer."""
    from .data.parallel import SPLIT_NAMES, ParallelDataset, read_split
    from .evaluate import evaluate_model
    from .evaluate.bleu import evaluate_translation
    from .io import saved_tokenizer
    from .tasks import get_task

    if model.task != "translation":
        raise ConfigError(f"{directory} is a {model.task} model; data {data_cfg.name!r} needs a translation model")
    if data_cfg.path is None and data_cfg.name == "translation":
        raise ConfigError("--data translation needs --data-path: the folder of the {split}.{lang}[.gz] files "
                          "(e.g. ../shared/data/multi30k)")
    if split not in SPLIT_NAMES:
        raise ConfigError(f"split {split!r} is not a translation split; use --split with one of "
                          f"{', '.join(SPLIT_NAMES)}")
    if beams < 1 or max_new_tokens < 1:
        raise ConfigError(f"--beams {beams} and --max-new-tokens {max_new_tokens} must be >= 1")
    tokenizer = saved_tokenizer(directory)
    if tokenizer is None:
        raise ConfigError(f"{directory} has no tokenizer.json; translation needs the tokenizer the model was "
                          "trained with (a training run's checkpoints carry it)")
    meta = getattr(model, "meta", None) or {}  # what the trainer saved: the data's languages, splits, ...
    src_lang, tgt_lang = data_cfg.src_lang or meta.get("src_lang"), data_cfg.tgt_lang or meta.get("tgt_lang")
    if not src_lang or not tgt_lang:
        raise ConfigError(f"{directory} does not record its language pair (meta src_lang / tgt_lang); evaluate a "
                          "training run, or save the model with meta={'src_lang': 'en', 'tgt_lang': 'de'}")
    limit = getattr(model.config, "max_position_embeddings", None)
    max_length = min(max_length, limit) if limit else max_length
    if data_cfg.name == "numbers":  # embedded: the split is regenerated from the run's seed
        from .data.numbers import SPLITS, number_pairs

        name, pairs = f"numbers {split}", number_pairs(SPLITS, seed=data_cfg.seed)[split]
    else:
        name, pairs = read_split(data_cfg.path, split, src_lang, tgt_lang)
    dataset = ParallelDataset(pairs, tokenizer, max_length)
    metrics = evaluate_model(model, dataset, get_task("translation"), batch_size=batch_size)
    scores = evaluate_translation(model, tokenizer, dataset.sources, dataset.targets, num_beams=beams,
                                  batch_size=min(batch_size, 64), max_new_tokens=max_new_tokens, max_length=max_length)
    scores.pop("hypotheses")
    return {"languages": f"{src_lang}-{tgt_lang}", "split_name": name, **metrics, **scores}


def translate(checkpoint: str, *sentences: str, file: str | None = None, out: str | None = None, beams: int = 4,
              max_new_tokens: int = 128, batch_size: int = 64) -> int:
    """Translate sentences (or --file, one a line, plain or .gz) with a translation model: one translation per
    line, to the terminal or --out; an empty input line gives an empty output line."""
    from .data.parallel import read_lines
    from .evaluate.bleu import translate_texts
    from .io import load, resolve_checkpoint, saved_tokenizer

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
    if out is not None and Path(out).is_dir():
        raise ConfigError(f"--out {out} is a directory; give a file path for the translations")
    directory = resolve_checkpoint(checkpoint)
    model = load(directory)
    if model.task != "translation":
        raise ConfigError(f"{directory} is a {model.task} model; `translate` needs a translation model "
                          "(e.g. one trained with recipes/multi30k_transformer.yaml)")
    tokenizer = saved_tokenizer(directory)
    if tokenizer is None:
        raise ConfigError(f"{directory} has no tokenizer.json; translation needs the tokenizer the model was "
                          "trained with")
    lines = translate_texts(model, tokenizer, items, num_beams=beams, batch_size=batch_size,
                            max_new_tokens=max_new_tokens)
    if out is None:
        for line in lines:
            print(line)
        return 0
    try:
        Path(out).write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot write --out {out} ({e}); give a writable file path") from None
    print(f"{len(lines)} translations -> {out}")
    return 0


def predict(checkpoint: str, *inputs: str, top_k: int = 5, max_new_tokens: int = 200, temperature: float = 0.8,
            seed: int = 0, model: str | None = None) -> int:
    """Classify image files (top-k classes) or continue a text prompt, with a saved model (or, with --model,
    a torchvision state dict such as resnet50-11ad3fa6.pth)."""
    from .infer.predict import classify_images, continue_text
    from .io import load, resolve_checkpoint

    if not inputs:
        raise ConfigError("give at least one input: image file paths, or a text prompt for a language model")
    if model is not None:  # a plain state dict: the architecture comes from --model
        directory, net = None, load(checkpoint, model=model)
    else:
        directory = resolve_checkpoint(checkpoint)
        net = load(directory)
    if net.task == "language_modeling":
        for prompt in inputs:
            print(continue_text(net, directory, prompt, max_new_tokens=max_new_tokens,
                                temperature=temperature, seed=seed))
        return 0
    failed = 0
    for path, ranked in classify_images(net, [Path(p) for p in inputs], top_k=top_k):
        if isinstance(ranked, BigModelsError):  # one unreadable file does not stop the others
            print(f"error: {ranked}", file=sys.stderr)
            failed += 1
        else:
            print(f"{path}: " + ", ".join(f"{label} {p:.3f}" for label, p in ranked))
    return 2 if failed else 0


def generate(checkpoint: str, *prompts: str, max_new_tokens: int = 100, temperature: float = 0.8,
             top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
             stop: str | None = None, seed: int = 0) -> int:
    """Continue text prompts with a language model, streaming the new text to the terminal as it comes."""
    from .data.tokenizers import load_tokenizer
    from .io import load, resolve_checkpoint

    directory = resolve_checkpoint(checkpoint)
    model = load(directory)
    if model.task != "language_modeling":
        raise ConfigError(f"{directory} is a {model.task} model; `generate` needs a language model")
    if not prompts:
        raise ConfigError("give a prompt to continue, e.g. bigmodels generate RUN 'To be'")
    tokenizer = load_tokenizer(directory)
    for prompt in prompts:
        if not prompt:
            raise ConfigError("the prompt is empty; give some text to continue")
        encoded = tokenizer.encode(prompt, unknown="error")
        ids = list(getattr(encoded, "ids", encoded))
        if not hasattr(model, "new_cache"):  # recurrent models decode with their own state
            from .infer.predict import continue_text

            print(continue_text(model, directory, prompt, max_new_tokens=max_new_tokens,
                                temperature=temperature, top_k=top_k, seed=seed))
            continue
        from .infer.generate import stream

        steps = stream(model, [ids], max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                       top_p=top_p, repetition_penalty=repetition_penalty, seed=seed,
                       stop_strings=(stop,) if stop else (), decode=tokenizer.decode)  # checks the arguments
        sys.stdout.write(prompt)
        new: list[int] = []
        shown = ""
        for token in steps:
            new.append(int(token[0]))
            text = tokenizer.decode(new)  # decode the whole continuation: byte-level BPE pieces join up
            sys.stdout.write(text[len(shown):])
            sys.stdout.flush()
            shown = text
        sys.stdout.write("\n")
    return 0


def embed(checkpoint: str, *texts: str, file: str | None = None, out: str | None = None, batch_size: int = 64,
          max_length: int = 256) -> int:
    """Sentence embeddings: texts (or a file, one text a line) -> vectors, as JSON lines or a .npy file."""
    from .data.tokenizers import load_tokenizer
    from .infer.embed import embed_texts
    from .io import load, resolve_checkpoint

    directory = resolve_checkpoint(checkpoint)
    items = list(texts)
    if file is not None:
        try:
            items += Path(file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read --file {file!r} ({e}); give a UTF-8 text file, one text a line") from None
    if not items:
        raise ConfigError("give texts to embed, or --file with one text a line")
    vectors = embed_texts(load(directory), load_tokenizer(directory), items, batch_size=batch_size,
                          max_length=max_length)
    if out is not None:
        import numpy as np

        np.save(out, vectors.numpy())
        print(f"{len(items)} vectors of {vectors.shape[1]} dimensions -> {out}")
    else:
        for text, vector in zip(items, vectors.tolist(), strict=True):
            print(json.dumps({"text": text, "embedding": [round(v, 6) for v in vector]}))
    return 0


def convert(source: str, target: str, *, format: str = "hf", model: str | None = None) -> int:
    """Convert a model between formats: a bigmodels or Hugging Face directory, or a torchvision state dict
    with --model NAME (e.g. --model resnet50), -> format hf or bigmodels."""
    from .io import load, resolve_checkpoint, save, saved_tokenizer

    if model is not None:
        save(load(source, model=model), target, format=format)
        print(f"{source} ({model}) -> {target} ({format})")
        return 0
    directory = resolve_checkpoint(source)
    loaded = load(directory)
    save(loaded, target, format=format, tokenizer=saved_tokenizer(directory))
    print(f"{directory} -> {target} ({format})")
    return 0


def compare(*, quick: bool = False, out: str = "reports/compare", budget: float | None = None,
            models: str | None = None, data: str | None = None) -> int:
    """Train every registered family that fits the data and write a comparison report (Markdown + HTML)."""
    from .bench.compare import run_compare

    paths = run_compare(out_dir=Path(out), quick=quick, budget=budget,
                        models=models.split(",") if models else None, datasets=data.split(",") if data else None)
    print(f"report: {paths['md']}\n        {paths['html']}")
    return 0


def bench(*workloads: str, tiny: bool = False, device: str | None = None, steps: int | None = None,
          warmup: int | None = None, no_peer: bool = False, compile: bool = False, no_compile: bool = False,
          data: str | None = None, out: str = "benchmarks/out", list: bool = False) -> int:
    """Speed side by side with the peer libraries (transformers, torchvision, sentence-transformers) on the same
    weights: throughput, latency, peak memory, MFU and the targets, as a table and speed.json in --out. --tiny
    runs CPU-sized models; compile is on for CUDA unless --no-compile; --list shows the workloads."""
    from .bench.speed import format_table, run_speed, workloads_table

    if list:
        print(workloads_table())
        return 0
    if compile and no_compile:
        raise ConfigError("--compile and --no-compile contradict each other; give one (default: compile on CUDA)")
    rows, paths = run_speed(workloads, tiny=tiny, device=device, steps=steps, warmup=warmup, peer=not no_peer,
                            compile=True if compile else False if no_compile else None, data=data, out=out)
    print(format_table(rows))
    print("\n".join(f"{kind}: {path}" for kind, path in paths.items()))
    return 1 if any("error" in r for r in rows) else 0


# how the *args of a command read in --help
_VAR_ARGS = {
    "overrides": ("KEY=VALUE", "dotted config overrides, e.g. optim.lr=3e-4 train.epochs=2"),
    "inputs": ("INPUT", "image files to classify, or text prompts for a language model"),
    "prompts": ("PROMPT", "text to continue"),
    "texts": ("TEXT", "texts to embed"),
    "sentences": ("SENTENCE", "sentences to translate"),
    "workloads": ("WORKLOAD", "speed workloads to run (default: all); see --list"),
}

COMMANDS = {
    "models": models, "train": train, "evaluate": evaluate, "predict": predict, "generate": generate,
    "embed": embed, "translate": translate, "convert": convert, "compare": compare, "bench": bench,
}

# ---------------------------------------------------------------------------------------------- plumbing


def _plain(cfg) -> dict:
    from .config import to_dict

    return to_dict(cfg)


def _trained_data_config(directory: Path):
    run = directory / "run.json"
    if not run.is_file():
        return None
    from .config import DataConfig, from_dict

    return from_dict(DataConfig, json.loads(run.read_text())["data"], "data")


def _summary_text(summary: dict, path: Path) -> str:
    lines = [f"status: {summary['status']} at step {summary['step']} ({summary['train_seconds']:.1f} s training)"]
    for split in ("val", "test"):
        if summary.get(split):
            lines.append(f"{split}: " + ", ".join(f"{k} {v:.4f}" for k, v in summary[split].items()
                                                   if isinstance(v, float) and k not in ("lr", "throughput")))
    lines.append(f"best checkpoint: {summary['best_checkpoint']}")
    lines.append(f"summary: {path}")
    return "\n".join(lines)


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    for r in (header, tuple("-" * w for w in widths), *rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _base_type(tp):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bigmodels", description=__doc__.splitlines()[0])
    from . import __version__

    parser.add_argument("--version", action="version", version=f"bigmodels {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, fn in COMMANDS.items():
        doc = inspect.getdoc(fn) or ""
        p = sub.add_parser(name, help=doc.splitlines()[0] if doc else "", description=doc)
        hints = typing.get_type_hints(fn)
        for param in inspect.signature(fn).parameters.values():
            tp = _base_type(hints.get(param.name, str))
            flag = "--" + param.name.replace("_", "-")
            if param.kind is param.VAR_POSITIONAL:
                metavar, help_ = _VAR_ARGS.get(param.name, (param.name.upper(), None))
                p.add_argument(param.name, nargs="*", metavar=metavar, help=help_)
            elif param.kind is param.POSITIONAL_OR_KEYWORD:
                nargs = "?" if param.default is not param.empty else None
                p.add_argument(param.name, nargs=nargs, default=None if nargs else argparse.SUPPRESS)
            elif tp is bool:
                p.add_argument(flag, dest=param.name, action="store_true", default=param.default)
            else:
                p.add_argument(flag, dest=param.name, type=tp, default=param.default, metavar=tp.__name__.upper())
        p.set_defaults(_fn=fn)
    return parser


def _call(fn, ns: argparse.Namespace, extra: list[str]) -> int:
    sig = inspect.signature(fn)
    args, kwargs = [], {}
    var = next((p for p in sig.parameters.values() if p.kind is p.VAR_POSITIONAL), None)
    if extra and var is None:
        raise ConfigError(f"unrecognised arguments: {' '.join(extra)}; see `bigmodels {ns.command} --help`")
    for param in sig.parameters.values():
        if param.kind is param.POSITIONAL_OR_KEYWORD:
            args.append(getattr(ns, param.name))
        elif param.kind is param.VAR_POSITIONAL:
            args.extend(list(getattr(ns, param.name) or []) + extra)
        else:
            kwargs[param.name] = getattr(ns, param.name)
    if var is not None and fn is train:
        # a first positional that looks like an override is not a recipe
        if args and args[0] is not None and "=" in args[0] and not Path(args[0]).is_file():
            args = [None, *args]
    return fn(*args, **kwargs)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    parser = _build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    ns, extra = parser.parse_known_args(argv)
    if ns.command is None:
        parser.print_help()
        return 2
    try:
        return _call(ns._fn, ns, extra)
    except BigModelsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: say so plainly, keep the traceback one variable away
        if os.environ.get("BIGMODELS_DEBUG"):
            raise
        print(f"internal error: {type(e).__name__}: {e}\nthis is a bug in bigmodels; rerun with "
              "BIGMODELS_DEBUG=1 for the traceback and report it", file=sys.stderr)
        return 1
