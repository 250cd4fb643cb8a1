"""`bigmodels train`: a recipe and dotted overrides -> a training run in ``train.out_dir``.

Each command parameter's ``Annotated`` text is its ``--help``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from ..errors import ConfigError

__all__ = ["train", "run_training"]


def train(
    recipe: Annotated[str | None, "a YAML recipe (e.g. recipes/mnist_cnn.yaml); optional when model=NAME is "
                                  "given"] = None,
    *overrides: Annotated[str, "dotted config overrides, e.g. model=cnn_mnist optim.lr=3e-4 train.epochs=2 "
                               "(--optim.lr=3e-4 works too)"],
    quiet: Annotated[bool, "do not print the summary at the end (summary.json is written all the same)"] = False,
) -> int:
    """Train a model: a YAML recipe and/or dotted overrides (e.g. model=cnn_mnist data.name=mnist data.path=DIR).

    Example: bigmodels train model=mlp_small data.name=digits train.steps=200 train.out_dir=runs/digits
    """
    from ..config import resolve_run_config

    if recipe is not None and "=" in recipe and not Path(recipe).is_file():
        overrides, recipe = (recipe, *overrides), None  # a first override is not a recipe
    cfg = resolve_run_config(recipe, list(overrides))
    if recipe is None and not any(item.removeprefix("--").partition("=")[0] == "model" for item in overrides):
        raise ConfigError("no model to train: pass a recipe (e.g. bigmodels train recipes/mnist_cnn.yaml) or "
                          "model=NAME (e.g. bigmodels train model=mlp_small data.name=digits); "
                          "`bigmodels models` lists the names")
    summary, out = run_training(cfg)
    if out is not None and not quiet:
        print(summary_text(summary, out))
    return 130 if summary["status"] == "interrupted" else 0


def run_training(cfg: Any) -> tuple[dict[str, Any], Path | None]:
    """What `bigmodels train` does with a resolved run config: fit, score the best (else last) checkpoint on the
    test split where the data has one, and write ``summary.json`` into ``train.out_dir`` -> (the summary, its path;
    None on processes other than the main one)."""
    from .trainer import Trainer

    with Trainer(cfg) as trainer:
        summary = trainer.fit()
        if summary["status"] != "interrupted" and trainer.data.test is not None:
            trainer.load_checkpoint(summary["best_checkpoint"] or summary["last_checkpoint"])
            summary["test"] = trainer.evaluate("test")
    if not trainer.dist.is_main:
        return summary, None
    out = Path(cfg.train.out_dir) / "summary.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    return summary, out


def summary_text(summary: dict[str, Any], path: Path) -> str:
    """The few lines `bigmodels train` prints at the end of a run: status, val/test metrics, best checkpoint."""
    lines = [f"status: {summary['status']} at step {summary['step']} ({summary['train_seconds']:.1f} s training)"]
    for split in ("val", "test"):
        if summary.get(split):
            lines.append(f"{split}: " + ", ".join(f"{k} {v:.4f}" for k, v in summary[split].items()
                                                   if isinstance(v, float) and k not in ("lr", "throughput")))
    lines.append(f"best checkpoint: {summary['best_checkpoint']}")
    lines.append(f"summary: {path}")
    return "\n".join(lines)
