"""`bigmodels compress` (a bench job): quantize or prune a saved model, save it, and measure the trade-off."""

from __future__ import annotations

import copy
import json
import logging
import shlex
from pathlib import Path
from typing import Annotated, Any

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["compress", "METHODS"]

log = logging.getLogger(__name__)

METHODS = ("int8", "magnitude", "structured")


def _metric(directory: Path, data: str, data_path: str | None, split: str | None, batch_size: int, limit: int | None):
    """model -> the task metrics on ``data`` (what `bigmodels evaluate` reports), or None without --data."""
    from ..config import DataConfig
    from ..data import build_data
    from ..evaluate import evaluate_model
    from ..evaluate.commands import evaluate_sts_split
    from ..io import saved_tokenizer
    from ..tasks import get_task

    if data == "stsb":
        return lambda model: evaluate_sts_split(model, directory, data_path, split or "test", batch_size)
    bundle = build_data(DataConfig(name=data, path=data_path), tokenizer=saved_tokenizer(directory))
    available = [s for s in ("train", "val", "test") if getattr(bundle, s) is not None]
    split = split or ("test" if "test" in available else "val")
    if split not in available:
        raise ConfigError(f"--split {split} is not available for data {data!r}; use one of {', '.join(available)}")
    task = get_task(bundle.task, bundle.meta)

    def metric(model: nn.Module) -> dict[str, Any]:
        return evaluate_model(model, getattr(bundle, split), task, transform=bundle.eval_transform,
                              batch_size=batch_size, limit=limit)

    return metric


def compress(
    checkpoint: Annotated[str, "the model: a saved directory, a training run (its best checkpoint) or a hub name"],
    *,
    method: Annotated[str, "int8 (dynamic int8 Linear layers), magnitude (zero the smallest weights) or structured "
                           "(remove heads, FFN units, channels)"] = "int8",
    out: Annotated[str | None, "the directory to write the compressed model and compression.{md,json,png} to "
                               "(required)"] = None,
    ratio: Annotated[float, "magnitude: the fraction of weights zeroed; structured: of heads / units / channels "
                            "removed"] = 0.5,
    importance: Annotated[str, "structured: rank units by weight norm (l2) or first-order Taylor score (taylor, "
                               "needs --data)"] = "l2",
    kernel: Annotated[str, "int8: auto (PyTorch's x86 int8 GEMM for a CPU model, torchao otherwise), fbgemm or "
                           "torchao (needed for a model to run on a GPU later)"] = "auto",
    filter: Annotated[str | None, "int8 / magnitude: only the layers whose names match these comma-separated "
                                  "patterns, e.g. 'encoder.*'"] = None,
    data: Annotated[str | None, "the data set whose task metric goes into the table (e.g. digits, sst2, stsb)"] = None,
    data_path: Annotated[str | None, "the data set's folder or file, where it is not embedded"] = None,
    split: Annotated[str | None, "the split to score; default: test where the data has one, else val"] = None,
    limit: Annotated[int | None, "score only the first N examples of the split"] = None,
    batch_size: Annotated[int, "the batched latency's batch size, and the metric's"] = 32,
    seq_len: Annotated[int, "text models: tokens per example of the latency inputs"] = 64,
    iters: Annotated[int, "timed forward passes per latency figure"] = 10,
    ffn_ratio: Annotated[float | None, "structured, Transformer families: the fraction of FFN units removed, where "
                                       "it should differ from --ratio (then the heads' fraction)"] = None,
    taylor_batches: Annotated[int, "structured --importance taylor: training batches (of --batch-size, drawn at "
                                   "random with a fixed seed) whose gradients rank the units"] = 32,
    steps: Annotated[int, "structured: reach --ratio / --ffn-ratio in this many rounds, each removing the same "
                          "fraction of what is left and followed by --finetune"] = 1,
    finetune: Annotated[str | None, "structured: the training recipe run after each round, and any overrides "
                                    "as bigmodels train takes them ('RECIPE key=value ...'), with init= the "
                                    "round's pruned model and train.out_dir=OUT/round_i_finetuned"] = None,
) -> int:
    """Quantize or prune a saved model, save it to --out, and write its trade-off table against the original.

    The table (compression.md, .json, .png in --out): size on disk, parameters, FLOPs, latency at batch 1 and
    batched, and the task metric with --data, each beside the original's. Structured pruning wants fine-tuning
    after: train with init=OUT, or prune in --steps rounds with a --finetune recipe run after each (removing a
    large fraction at once loses more than the same cut made in steps with training between them). Example:
    bigmodels compress runs/mnist_cnn --method structured --ratio 0.5 --data digits --out runs/mnist_cnn_pruned
    """
    from ..compress.prune import prune_magnitude_, prune_structured_
    from ..compress.quantize import INT8_KERNELS, Int8DynamicConfig, int8_kernel_for, quantize_
    from ..io import load, resolve_checkpoint, save, saved_tokenizer
    from .tradeoff import to_markdown, tradeoff, write_tradeoff

    if not out:
        raise ConfigError("--out is required: the directory to write the compressed model and its table to")
    if method not in METHODS:
        raise ConfigError(f"--method {method!r} is not known; choose one of {', '.join(METHODS)}")
    for option, value in (("--batch-size", batch_size), ("--seq-len", seq_len), ("--iters", iters),
                          ("--taylor-batches", taylor_batches)):
        if value < 1:
            raise ConfigError(f"{option} {value} must be >= 1")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit {limit} must be >= 1")
    patterns = [p.strip() for p in filter.split(",") if p.strip()] if filter else None
    if kernel not in ("auto", *INT8_KERNELS):
        raise ConfigError(f"--kernel {kernel!r} is not known; choose auto, {', '.join(INT8_KERNELS)}")
    if kernel != "auto" and method != "int8":
        raise ConfigError(f"--kernel chooses the int8 kernel; --method {method} quantizes nothing: drop --kernel")
    if ffn_ratio is not None and method != "structured":
        raise ConfigError(f"--ffn-ratio sets the FFN units structured pruning removes; --method {method} has none: "
                          "drop --ffn-ratio or use --method structured")
    if steps < 1:
        raise ConfigError(f"--steps {steps} must be >= 1")
    if (steps > 1 or finetune) and method != "structured":
        raise ConfigError(f"--steps and --finetune prune in rounds with training between them; --method {method} "
                          "has no rounds: use --method structured, or drop them")
    if steps > 1 and not finetune:
        raise ConfigError(f"--steps {steps} without --finetune is one cut made in pieces (the same units go): give "
                          "--finetune RECIPE (trained after each round), or use --steps 1")
    finetune_args = shlex.split(finetune) if finetune else []
    if finetune is not None and (not finetune_args or not Path(finetune_args[0]).is_file()):
        raise ConfigError(f"--finetune {finetune!r}: no such recipe file; give a training recipe (YAML) whose model "
                          "is the one pruned, then any overrides, e.g. 'recipes/sst2_minilm_pruned_kd.yaml "
                          "train.epochs=1'")
    if patterns is not None and method == "structured":
        raise ConfigError("--filter selects layers for int8 and magnitude; structured pruning prunes every "
                          "attention module, FFN and convolution: drop --filter")
    directory = resolve_checkpoint(checkpoint)
    original = load(directory)
    metric = _metric(directory, data, data_path, split, batch_size, limit) if data else None
    model = copy.deepcopy(original)
    if method == "int8":
        report = quantize_(model, Int8DynamicConfig(filter=patterns, kernel=int8_kernel_for(model)
                                                    if kernel == "auto" else kernel))
    elif method == "magnitude":
        report = prune_magnitude_(model, ratio, filter=patterns)
    else:
        if importance == "taylor" and metric is None:
            raise ConfigError("--importance taylor needs gradients of the task loss: give --data (or use l2)")
        # each round removes the same fraction of what is left: (1 - r)^(1/steps) of it stays
        per_round = [ratio, ffn_ratio] if steps == 1 else [
            1 - (1 - r) ** (1 / steps) for r in (ratio, ratio if ffn_ratio is None else ffn_ratio)]
        source, rounds = directory, []
        for i in range(1, steps + 1):
            if i > 1:
                model = load(source)
            batches = loss_fn = None
            if importance == "taylor":
                batches, loss_fn = _taylor_batches(source, data, data_path, batch_size, taylor_batches)
            report = prune_structured_(model, per_round[0], importance=importance, batches=batches, loss_fn=loss_fn,
                                       ffn_ratio=per_round[1])
            if finetune:
                pruned_dir = Path(out) / f"round_{i}"
                save(model, pruned_dir, tokenizer=saved_tokenizer(directory))
                source = _finetune(finetune_args, pruned_dir, Path(out) / f"round_{i}_finetuned")
                rounds.append({"round": i, "pruned": str(pruned_dir), "finetuned": str(source),
                               "report": report.as_dict()})
        if finetune:
            model = load(source)
    save(model, out, tokenizer=saved_tokenizer(directory))
    description = {"checkpoint": str(directory), "method": method, "report": report.as_dict(),
                   **({"ratio": ratio} if method != "int8" else {}),
                   **({"ffn_ratio": ffn_ratio} if ffn_ratio is not None else {}),
                   **({"steps": steps, "finetune": finetune, "rounds": rounds} if finetune else {})}
    table = tradeoff(original, model, batch=batch_size, seq_len=seq_len, iters=iters, metric=metric,
                     description=description)
    paths = write_tradeoff(table, out)
    print(to_markdown(table))
    print(json.dumps({"out": str(out), "files": [str(p) for p in paths]}))
    return 0


def _finetune(args: list[str], init: Path, out_dir: Path) -> Path:
    """Train the recipe ``args[0]`` (with the overrides ``args[1:]``) from the pruned model ``init`` into
    ``out_dir``, as `bigmodels train` does (summary.json, the test split scored where there is one); -> the run's
    best (else last) checkpoint."""
    from ..config import resolve_run_config
    from ..io import resolve_checkpoint
    from ..train.commands import run_training

    overrides = [*args[1:], f"init={init}", f"train.out_dir={out_dir}"]
    log.info("fine-tuning %s with %s into %s", init, " ".join(args), out_dir)
    summary, _ = run_training(resolve_run_config(args[0], overrides))  # as `bigmodels train` runs it
    if summary["status"] == "interrupted":
        raise ConfigError(f"the fine-tuning of {init} was interrupted; its run is in {out_dir}: resume it with "
                          f"bigmodels train {' '.join(map(shlex.quote, [args[0], *overrides]))}, then prune on "
                          "from it")
    return resolve_checkpoint(out_dir)


def _taylor_batches(directory: Path, data: str, data_path: str | None, batch_size: int, count: int):
    """``count`` batches of ``data``'s training split, drawn at random (seed 0) across the whole split, and the
    task's loss, for first-order Taylor importance."""
    from ..config import DataConfig
    from ..data import build_data
    from ..data.batching import iterate_batches
    from ..io import saved_tokenizer
    from ..tasks import get_task

    bundle = build_data(DataConfig(name=data, path=data_path), tokenizer=saved_tokenizer(directory))
    task = get_task(bundle.task, bundle.meta)
    n = min(len(bundle.train), count * batch_size)
    order = torch.randperm(len(bundle.train), generator=torch.Generator().manual_seed(0))[:n].tolist()
    ranges = (order[i:i + batch_size] for i in range(0, n, batch_size))
    batches = [(bundle.eval_transform(x) if bundle.eval_transform else x, y)
               for x, y in iterate_batches(bundle.train, ranges, 0)]
    return batches, lambda model, batch: task.loss(model, *batch)[0]
