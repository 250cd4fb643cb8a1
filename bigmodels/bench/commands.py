"""`bigmodels models`, `compare` and `bench`: what the registry holds, and how its models measure up.

Each command parameter's ``Annotated`` text is its ``--help``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

from ..errors import ConfigError

__all__ = ["models", "compare", "bench"]


def models(
    *,
    pattern: Annotated[str | None, "only the names that match this shell pattern, e.g. 'cnn*'"] = None,
    task: Annotated[str | None, "only the models of this task, e.g. language_modeling"] = None,
) -> int:
    """List the registered models with their family, task and parameter count.

    Example: bigmodels models --pattern 'resnet*'
    """
    import torch

    from ..registry import create_model, get_spec, list_models

    names = list_models(pattern, task=task)
    if not names:
        raise ConfigError(f"no model matches pattern={pattern!r} task={task!r}; run `bigmodels models` for all")
    rows = []
    for name in names:
        spec = get_spec(name)
        with torch.device("meta"):  # counts parameters without allocating them
            n = sum(p.numel() for p in create_model(name).parameters())
        rows.append((name, spec.family, spec.task, f"{n:,}", spec.description))
    print(_table(("model", "family", "task", "params", "description"), rows))
    return 0


def compare(
    *,
    quick: Annotated[bool, "a few steps per model on the embedded data (minutes on a CPU)"] = False,
    out: Annotated[str, "the folder for report.md, report.html and results.json"] = "reports/compare",
    budget: Annotated[float | None, "training seconds per model (default: the data plan's, shorter with "
                                    "--quick)"] = None,
    models: Annotated[str | None, "comma-separated model names (default: every family that fits the data)"] = None,
    data: Annotated[str | None, "comma-separated embedded data sets to compare on (default: all of them)"] = None,
) -> int:
    """Train every registered family that fits the data and write a comparison report (Markdown + HTML).

    Example: bigmodels compare --quick --models mlp_small,cnn_small
    """
    from .._files import check_output
    from .compare import run_compare

    if budget is not None and not (math.isfinite(budget) and budget > 0):
        raise ConfigError(f"--budget {budget} must be a positive number of training seconds per model, e.g. "
                          "--budget 30 (or leave it out for the data plan's)")
    check_output(out, "--out", directory=True)  # before minutes of training
    paths = run_compare(out_dir=Path(out), quick=quick, budget=budget, models=_names("--models", models),
                        datasets=_names("--data", data))
    print(f"report: {paths['md']}\n        {paths['html']}")
    return 0


def _names(option: str, value: str | None) -> list[str] | None:
    """A comma-separated list option: None when not given; an empty list or an empty name is an error (it would
    otherwise read as "not given" and run everything)."""
    if value is None:
        return None
    names = [n.strip() for n in value.split(",")]
    if not any(names) or not all(names):
        raise ConfigError(f"{option} {value!r} has an empty name; give comma-separated names without blanks, e.g. "
                          f"{option} {'mlp_small,cnn_small' if option == '--models' else 'digits,pydoc'} (or leave "
                          f"{option} out for all)")
    return names


def bench(
    *workloads: Annotated[str, "speed workloads to run (default: all); see --list"],
    tiny: Annotated[bool, "CPU-sized models instead of the real ones"] = False,
    device: Annotated[str | None, "cpu, cuda or cuda:N (default: cuda where available)"] = None,
    steps: Annotated[int | None, "timed steps per workload (default: the workload's own)"] = None,
    warmup: Annotated[int | None, "untimed steps before timing (default: the workload's own)"] = None,
    no_peer: Annotated[bool, "time bigmodels only, not the peer library or engines"] = False,
    compile: Annotated[bool, "torch.compile the models (default: on for CUDA)"] = False,
    no_compile: Annotated[bool, "never torch.compile"] = False,
    data: Annotated[str | None, "the STS-B test csv (or its folder) for the embedding workloads"] = None,
    out: Annotated[str, "the folder for speed.json and the table"] = "benchmarks/out",
    list: Annotated[bool, "print the workloads and exit"] = False,
) -> int:
    """Time bigmodels side by side with the peer libraries on the same weights, as a table and speed.json.

    The peers are transformers, torchvision and sentence-transformers, and on the CPU rows (*-cpu-*) the
    engines CTranslate2 and ONNX Runtime, built from the same weights (pip install "bigmodels[ctranslate2]"
    and "bigmodels[export]"); each row gives throughput, latency, peak memory, MFU and the target it is held
    to. --tiny runs CPU-sized models; compile is on for CUDA unless --no-compile; --list shows the workloads.

    Example: bigmodels bench --tiny --device cpu
    """
    from .speed import format_table, run_speed, workloads_table

    if list:
        print(workloads_table())
        return 0
    if compile and no_compile:
        raise ConfigError("--compile and --no-compile contradict each other; give one (default: compile on CUDA)")
    if steps is not None and steps < 1:
        raise ConfigError(f"--steps {steps} must be >= 1 (or leave it out for the workload's own)")
    if warmup is not None and warmup < 0:
        raise ConfigError(f"--warmup {warmup} must be >= 0 (or leave it out for the workload's own)")
    from .._files import check_output

    check_output(out, "--out", directory=True)  # before the workloads run, not after
    rows, paths = run_speed(workloads, tiny=tiny, device=device, steps=steps, warmup=warmup, peer=not no_peer,
                            compile=True if compile else False if no_compile else None, data=data, out=out)
    print(format_table(rows))
    print("\n".join(f"{kind}: {path}" for kind, path in paths.items()))
    return 1 if any("error" in r for r in rows) else 0


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """Left-aligned columns under a header and a rule of dashes."""
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in (header, tuple("-" * w for w in widths), *rows))
