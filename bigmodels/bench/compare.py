"""`bigmodels compare`: train every registered family that fits the data, measure it, write a report.

Each model is trained and measured in a fresh process (so peak memory and speed are its own), on the same
data, recipe and time budget, then the report compares parameters, FLOPs, training throughput, inference
latency, peak memory and accuracy, with the hardware and versions; ONNX Runtime latency beside PyTorch's
(:func:`onnx_latency`), what int8 quantization and structured pruning cost and buy (:func:`compression_tradeoffs`)
and the faithfulness of each attribution method (:func:`attribution_faithfulness`)::

    >>> from bigmodels.bench.compare import run_compare
    >>> paths = run_compare(out_dir=Path("reports/compare"), quick=True)   # doctest: +SKIP
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import multiprocessing
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError

__all__ = ["run_compare", "PLANS", "compression_tradeoffs"]

log = logging.getLogger("bigmodels.bench.compare")


@dataclass(frozen=True)
class Plan:
    """How one embedded data set is trained in a comparison: one shared recipe for every model."""

    data: str
    task: str
    overrides: tuple[str, ...]
    steps: int  # step cap (the schedule's length)
    quick_steps: int
    budget: float  # seconds of training per model
    quick_budget: float


PLANS = {
    "digits": Plan(
        "digits", "image_classification",
        ("data.batch_size=64", "optim.name=adamw", "optim.lr=0.003", "optim.weight_decay=0.01",
         "sched.name=cosine", "sched.warmup_steps=20", "train.monitor=val_accuracy"),
        steps=1000, quick_steps=300, budget=60.0, quick_budget=12.0,
    ),
    "pydoc-mlm": Plan(
        "mlm", "masked_language_modeling",
        ("data.batch_size=32", "data.max_length=128", "optim.name=adamw", "optim.lr=0.001",
         "optim.weight_decay=0.01", "sched.name=cosine", "sched.warmup_steps=20", "train.clip_grad_norm=1.0"),
        steps=3000, quick_steps=400, budget=180.0, quick_budget=25.0,
    ),
    "pydoc": Plan(
        "pydoc", "language_modeling",
        ("data.batch_size=32", "data.block_size=128", "optim.name=adamw", "optim.lr=0.003",
         "optim.weight_decay=0.01", "sched.name=cosine", "sched.warmup_steps=20", "train.clip_grad_norm=1.0"),
        steps=3000, quick_steps=400, budget=180.0, quick_budget=25.0,
    ),
    "numbers": Plan(
        "numbers", "translation",
        ("data.tokenizer=bpe:600", "data.batch_size=64", "optim.name=adamw", "optim.lr=0.003", "sched.name=cosine",
         "sched.warmup_steps=30", "train.label_smoothing=0.1", "train.clip_grad_norm=1.0"),
        steps=2000, quick_steps=300, budget=120.0, quick_budget=20.0,
    ),
}


_LATENCY = {"warmup": 1, "iters": 10, "max_seconds": 2.0}


def _measure_one(model_name: str, plan: Plan, quick: bool, budget: float | None, run_root: str,
                 onnx: bool = True) -> dict[str, Any]:
    """Train and measure one model (runs in a child process); failures come back as an ``error`` row.
    ``onnx=False`` skips the ONNX Runtime latency (quick mode times one model per family: an export costs 1-6 s)."""
    import torch

    from ..config import resolve_run_config
    from ..data.batching import fetch_batch
    from ..evaluate import evaluate_model
    from ..registry import get_spec
    from ..train import Trainer
    from . import count_flops, count_params, measure_latency, peak_memory

    spec = get_spec(model_name)
    row: dict[str, Any] = {"model": model_name, "family": spec.family, "task": spec.task, "error": None}
    try:
        seconds = budget if budget is not None else (plan.quick_budget if quick else plan.budget)
        steps = plan.quick_steps if quick else plan.steps
        cfg = resolve_run_config(None, [
            f"model={model_name}", f"data.name={plan.data}", *plan.overrides, f"train.steps={steps}",
            f"train.max_time={seconds}", f"train.eval_every={max(50, steps // 6)}", "train.log_every=10",
            "train.progress=false", f"train.out_dir={run_root}/{plan.data}/{model_name}", "train.device=cpu",
        ])
        trainer = Trainer(cfg)
        with peak_memory(torch.device("cpu")) as mem:  # the training's own peak, over model + data
            summary = trainer.fit()
        model, data = trainer.model, trainer.data
        model.eval()
        x, _ = fetch_batch(data.val, range(min(64 if spec.task == "image_classification" else 8, len(data.val))))
        if data.eval_transform is not None:
            x = data.eval_transform(x)
        one = {k: v[:1] for k, v in x.items()} if isinstance(x, dict) else x[:1]
        measured = _NamedInputs(model)  # text models take a dict of named inputs
        test = trainer.evaluate("test") if data.test is not None else {}
        metrics = {f"val_{k}": v for k, v in (summary["val"] or {}).items() if k not in ("lr", "throughput")}
        metrics.update({f"test_{k}": v for k, v in test.items()})
        row.update(
            params=count_params(model),
            flops_per_sample=count_flops(measured, (one,)),
            train_throughput=summary["throughput"],
            throughput_unit=f"{summary['unit']}/s",
            train_seconds=summary["train_seconds"],
            steps=summary["step"],
            epochs=round(summary["step"] / max(1, trainer.steps_per_epoch), 2),
            latency_ms=measure_latency(measured, (one,), **_LATENCY)["latency_ms_median"],
            batch_latency_ms=measure_latency(measured, (x,), **_LATENCY)["latency_ms_median"],
            latency_batch=int(next(iter(x.values())).shape[0] if isinstance(x, dict) else x.shape[0]),
            peak_memory_bytes=mem.bytes,
            memory_kind=mem.kind,
            metrics=metrics,
            history=[{k: r[k] for k in ("step", "split", "loss") if k in r} for r in trainer.history],
        )
        started = time.perf_counter()
        row["onnx"] = (onnx_latency(model, one, x) if onnx else
                       {"note": "quick mode times ONNX Runtime for one model per family"})
        row["onnx_seconds"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        row["compression"] = (compression_tradeoffs(model, one, x, lambda m: evaluate_model(
            m, data.val, trainer.eval_task, transform=data.eval_transform, limit=_COMPRESS_EVAL)) if onnx else
            {"note": "quick mode compresses one model per family"})
        row["compression_seconds"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        row["faithfulness"] = attribution_faithfulness(model, x, getattr(data, "tokenizer", None), quick=quick)
        row["faithfulness_seconds"] = round(time.perf_counter() - started, 2)
    except Exception as e:  # one failing model must not sink the report
        log.error("%s failed: %s", model_name, e)
        row["error"] = f"{type(e).__name__}: {e}"
        row["traceback"] = traceback.format_exc()
    return row


def _cut(x: Any, length: int) -> Any:
    """Token inputs cut to their first ``length`` positions (a dict's sequence-shaped entries, or an id tensor)."""
    if isinstance(x, dict):
        return {k: v[:, :length] if k in ("input_ids", "attention_mask", "token_type_ids") else v for k, v in x.items()}
    return x[:, :length]


def onnx_latency(model: torch.nn.Module, one: Any, batch: Any) -> dict[str, Any]:
    """ONNX Runtime latency of ``model`` beside PyTorch's, at batch 1 (``one``) and on ``batch``: the model is
    exported (:func:`bigmodels.export.export_onnx` at its default shapes, dynamic batch and sequence, parity
    checked) to a temporary folder and loaded back with :func:`bigmodels.load`; PyTorch is timed again right
    before it on the same inputs. Returns ``{"latency_ms", "batch_latency_ms", "torch_latency_ms",
    "torch_batch_latency_ms", "export_seconds", "parity"}``; when the export fixed the sequence length (an
    unrolled ``nn.RNN``) both sides are timed on the inputs cut to it (``"length"``). ``{"error": why}`` when the
    export fails, ``{"note": ...}`` when ONNX Runtime is not installed."""
    import importlib.util

    from ..io import load
    from . import measure_latency

    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        return {"note": f"{', '.join(missing)} not installed (pip install \"bigmodels[export]\")"}
    from ..export import export_onnx

    with tempfile.TemporaryDirectory(prefix="bigmodels-compare-onnx-") as folder:
        try:
            result = export_onnx(model, folder)
            session = _NamedInputs(load(result.path))
            out: dict[str, Any] = {"export_seconds": result.seconds, "parity": result.parity}
            ids = one["input_ids"] if isinstance(one, dict) else one
            fixed = "input_ids" in result.dynamic_axes and "1" not in result.dynamic_axes["input_ids"]
            if fixed and not ids.is_floating_point() and ids.shape[-1] > result.checked_at["input_ids"][1]:
                out["length"] = result.checked_at["input_ids"][1]
                one, batch = _cut(one, out["length"]), _cut(batch, out["length"])
            # PyTorch timed again here, right beside ONNX Runtime, so both see the same machine
            for side, runner in (("torch_", _NamedInputs(model)), ("", session)):
                out[f"{side}latency_ms"] = measure_latency(runner, (one,), **_LATENCY)["latency_ms_median"]
                out[f"{side}batch_latency_ms"] = measure_latency(runner, (batch,), **_LATENCY)["latency_ms_median"]
            return out
        except Exception as e:  # noqa: BLE001 (a model the exporter cannot take is reported, not fatal)
            log.warning("ONNX export of %s failed: %s", type(model).__name__, e)
            text = str(e).strip().splitlines()
            return {"error": f"{type(e).__name__}: {text[0] if text else ''}"}


_COMPRESS_EVAL = 512  # validation examples each compressed model is scored on


def compression_tradeoffs(model: torch.nn.Module, one: Any, batch: Any,
                          metric: Any = None) -> list[dict[str, Any]] | dict[str, str]:
    """What compressing a trained ``model`` costs and buys, one row per method: int8 dynamic quantization of its
    Linear layers (:class:`~bigmodels.compress.Int8DynamicConfig`, on a CPU model PyTorch's x86 int8 GEMM:
    :func:`~bigmodels.compress.quantize.int8_kernel_for`) and structured pruning of half its heads / FFN
    units / channels (:func:`~bigmodels.compress.prune_structured_`, L2 importance, no fine-tuning after: the
    metric lost is the upper bound fine-tuning recovers from). Each row: parameters, FLOPs at batch 1 (pruning),
    latency at batch 1 (``one``) and on ``batch`` as compressed / original, and ``metric(model)``'s entries as
    compressed - original; ``{"error": why}`` in a row whose method does not apply (int8 on a GPU without
    torchao)."""
    import copy
    import importlib.util

    from ..compress import Int8DynamicConfig, prune_structured_, quantize_
    from ..compress.quantize import int8_kernel_for
    from . import count_flops, count_params, measure_latency

    def figures(m: torch.nn.Module, flops: bool) -> dict[str, Any]:
        runner = _NamedInputs(m).eval()
        out = {"params": count_params(m),
               "latency_ms": measure_latency(runner, (one,), **_LATENCY)["latency_ms_median"],
               "batch_latency_ms": measure_latency(runner, (batch,), **_LATENCY)["latency_ms_median"]}
        out["flops"] = count_flops(runner, (one,)) if flops else None
        out["metrics"] = metric(m) if metric is not None else {}
        return out

    methods = [("structured 0.5", lambda m: prune_structured_(m, 0.5))]
    kernel = int8_kernel_for(model)  # a CPU model: PyTorch's own x86 int8 GEMM, no torchao needed
    if kernel == "fbgemm" or importlib.util.find_spec("torchao") is not None:
        methods.insert(0, ("int8", lambda m: quantize_(m, Int8DynamicConfig(kernel=kernel))))
    base = figures(model, flops=True)
    rows: list[dict[str, Any]] = []
    for name, apply in methods:
        row: dict[str, Any] = {"method": name, "error": None}
        try:
            compressed = copy.deepcopy(model)
            apply(compressed)
            got = figures(compressed, flops=name != "int8")  # the counter cannot dispatch int8 tensors
        except Exception as e:  # noqa: BLE001 (a method that does not apply to the family is a cell)
            text = str(e).strip().splitlines()
            row["error"] = f"{type(e).__name__}: {text[0] if text else ''}"
            rows.append(row)
            continue
        for key in ("params", "flops", "latency_ms", "batch_latency_ms"):
            a, b = base[key], got[key]
            row[f"{key}_ratio"] = b / a if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a else None
        row["metric_delta"] = {k: got["metrics"][k] - v for k, v in base["metrics"].items()
                               if k != "loss" and isinstance(v, (int, float)) and
                               isinstance(got["metrics"].get(k), (int, float))}
        rows.append(row)
    if not any(r["method"] == "int8" for r in rows):
        rows.append({"method": "int8", "error": 'torchao not installed (pip install "bigmodels[compress]")'})
    return rows


#: the attribution methods compare scores: the gradient methods, plus occlusion
FAITHFULNESS_METHODS = ("saliency", "ig", "gradcam", "occlusion")
_FAITH = {"steps": 10, "random_orders": 3, "infidelity_samples": 0, "sensitivity_samples": 0}


def _examples(model: torch.nn.Module, x: Any, tokenizer: Any, count: int,
              length: int = 32) -> list[tuple[Any, int | None]]:
    """Up to ``count`` single inputs of a validation batch, as :func:`bigmodels.explain.explain` takes them
    (texts: their last ``length`` tokens), each with the position to explain (masked LM: a [MASK] token, else the
    middle; otherwise None: the default)."""
    from ..models._contract import model_info

    masked = model_info(model).task == "masked_language_modeling"
    if isinstance(x, dict):
        mask = x.get("attention_mask")
        rows = [x["input_ids"][i][: int(mask[i].sum())] if mask is not None else x["input_ids"][i]
                for i in range(min(count, x["input_ids"].shape[0]))]
    else:
        rows = [x[i] for i in range(min(count, x.shape[0]))]
        if x.is_floating_point():  # images: whole
            return [(r, None) for r in rows]
    out = []
    for ids in rows:
        ids = ids[-length:]  # the last tokens: a language model's next-token prediction keeps its context
        position = None
        if masked:
            mask_id = getattr(tokenizer, "mask_id", None)
            found = (ids == mask_id).nonzero() if mask_id is not None else []
            position = int(found[0]) if len(found) else len(ids) // 2
        out.append((ids, position))
    return out


def attribution_faithfulness(model: torch.nn.Module, batch: Any, tokenizer: Any = None, *,
                             quick: bool = False, seconds: float = 6.0) -> list[dict[str, Any]] | dict[str, str]:
    """Deletion / insertion faithfulness (:func:`bigmodels.explain.faithfulness`) of each of
    :data:`FAITHFULNESS_METHODS` that applies to ``model``, averaged over a few inputs of ``batch`` (2 quick,
    3 full, texts cut to their last 32 / 64 tokens; fewer inputs when ``seconds`` run out): one row per method with
    the mean AUCs, the random baseline's and the margins (positive: better than random), or ``{"note": why}`` when
    nothing applies."""
    import importlib.util

    if importlib.util.find_spec("captum") is None:
        return {"note": 'captum not installed (pip install "bigmodels[explain]")'}
    from ..explain import explain, faithfulness, supports

    methods = [m for m in FAITHFULNESS_METHODS if m in supports(model)]
    if not methods:
        from ..explain._core import has_class_logits

        return {"note": has_class_logits(model) or "no gradient method applies to this model"}
    examples = _examples(model, batch, tokenizer, 2 if quick else 3, 32 if quick else 64)
    sums: dict[str, dict[str, float]] = {m: {} for m in methods}
    counts = dict.fromkeys(methods, 0)
    errors: dict[str, str] = {}
    deadline = time.perf_counter() + seconds
    for i, (inputs, position) in enumerate(examples):
        if i and time.perf_counter() > deadline:
            break
        for m in methods:
            if m in errors:
                continue
            try:
                e = explain(model, inputs, m, tokenizer=tokenizer, position=position)
                f = faithfulness(model, e, **_FAITH)
            except Exception as exc:  # noqa: BLE001 (one method's failure is a cell of the table)
                errors[m] = f"{type(exc).__name__}: {exc}"
                continue
            counts[m] += 1
            for k in ("deletion_auc", "random_deletion_auc", "insertion_auc", "random_insertion_auc",
                      "deletion_margin", "insertion_margin"):
                sums[m][k] = sums[m].get(k, 0.0) + f[k]
    rows = []
    for m in methods:
        row: dict[str, Any] = {"method": m, "examples": counts[m], "error": errors.get(m)}
        row.update({k: v / counts[m] for k, v in sums[m].items()} if counts[m] else {})
        rows.append(row)
    return rows


class _NamedInputs(torch.nn.Module):
    """Calls ``model(**x)`` for a dict batch (text) and ``model(x)`` otherwise, so one measuring call fits all."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(**x) if isinstance(x, dict) else self.model(x)


def _models_for(plan: Plan, models: list[str] | None) -> list[str]:
    from ..registry import get_spec, list_models

    if models:
        return [m for m in models if get_spec(m).task == plan.task]
    return [m for m in list_models(task=plan.task) if get_spec(m).compare]


def run_compare(
    *,
    out_dir: Path,
    quick: bool = False,
    budget: float | None = None,
    models: list[str] | None = None,
    datasets: list[str] | None = None,
) -> dict[str, Path]:
    """Train, measure and report; returns the paths of ``report.md`` (``md``) and ``report.html`` (``html``)."""
    from .._files import check_output
    from . import environment_info, write_report

    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))
                               or not math.isfinite(budget) or budget <= 0):
        raise ConfigError(f"budget={budget!r} must be a positive number of training seconds per model, e.g. 30 "
                          "(or None for the data plan's)")
    datasets = list(PLANS) if datasets is None else datasets
    if not datasets:
        raise ConfigError(f"no data set to compare on; name some of {', '.join(PLANS)} (or None for all)")
    unknown = [d for d in datasets if d not in PLANS]
    if unknown:
        raise ConfigError(f"compare runs on the embedded data sets {', '.join(PLANS)}; not {', '.join(unknown)}")
    if models is not None:
        from ..registry import get_spec

        if not models:
            raise ConfigError("no model to compare; name some (`bigmodels models` lists them), or None for all")
        for m in models:
            get_spec(m)  # unknown names fail now, not in a child
        idle = [m for m in models if not any(_models_for(PLANS[d], [m]) for d in datasets)]
        if idle:
            raise ConfigError(
                f"{', '.join(idle)} fit{'s' if len(idle) == 1 else ''} none of the data sets {', '.join(datasets)} "
                f"(their tasks: {', '.join(f'{d} {PLANS[d].task}' for d in datasets)}); drop "
                f"{'it' if len(idle) == 1 else 'them'} or add a data set of {'its' if len(idle) == 1 else 'their'} "
                "task")
    out_dir = check_output(out_dir, "the report folder (--out)", directory=True)  # before minutes of training
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = []
    ctx = multiprocessing.get_context("spawn")
    onnx_families: set[str] = set()  # quick mode: ONNX Runtime latency for the first model of each family
    with tempfile.TemporaryDirectory(prefix="bigmodels-compare-") as run_root:
        for name in datasets:
            plan = PLANS[name]
            for model_name in _models_for(plan, models):
                log.info("compare: training %s on %s", model_name, name)
                # a fresh process per model: its peak memory and timings are its own
                from ..registry import get_spec

                family = get_spec(model_name).family
                onnx = not quick or family not in onnx_families
                onnx_families.add(family)
                with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
                    row = pool.submit(_measure_one, model_name, plan, quick, budget, run_root, onnx).result()
                results.append(row)
                log.info("compare: %s done: %s", model_name, row.get("error") or row.get("metrics"))
    env = environment_info()
    mode = "quick" if quick else "full"
    budgets = ", ".join(
        f"{p.data}: {p.quick_budget if quick else p.budget:.0f} s or {p.quick_steps if quick else p.steps} steps"
        for p in (PLANS[d] for d in datasets)
    )
    notes = [
        f"Mode: {mode}. Every model of a task trains with the same recipe and budget ({budgets}); "
        "figures are from one run on the machine below.",
        "Image models: trained on the embedded scikit-learn digits (8x8), accuracy on its held-out 20% test split. "
        "Language models: character level on the Python help topics that ship with Python (pydoc_data), "
        "validation loss in nats per character on its last 10%. Masked language models (BERT): the same corpus, "
        "character tokens, masked-LM + next-sentence loss on its last 10% of documents. Encoder-decoders: the "
        "embedded numbers corpus (English number words -> German, bigmodels.data.numbers), teacher-forced loss and "
        "token accuracy on 1,000 held-out numbers.",
        "Latency: eval mode, batch 1 and a batch of validation data, median of timed runs after warm-up. ONNX "
        "Runtime: the same inputs through the model's ONNX export (default session threads).",
        "Peak memory: how far training raised the process's peak resident memory above where building the "
        "model and loading the data had left it (activations, gradients, optimizer state).",
        f"Total wall time of the comparison: {time.perf_counter() - started:.0f} s.",
    ]
    paths = write_report(results, out_dir, title="bigmodels compare", env=env, notes=notes)
    return {"md": paths["markdown"], "html": paths["html"], "json": paths["json"]}
