"""Run records: metrics as JSON lines, learning curves as a PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .._files import atomic_write

__all__ = ["MetricsLog", "plot_history"]


class MetricsLog:
    """Append one JSON object per record to ``path`` (only on the main process)."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(clean) + "\n")

    def truncate_after(self, step: int) -> int:
        """Drop the records past ``step`` (work lost since the checkpoint a run resumes from: those steps run
        again) and any line a kill cut short; returns how many lines went."""
        if not self.enabled or not self.path.is_file():
            return 0
        lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
        keep = [line for line in lines if _step_of(line) is not None and _step_of(line) <= step]
        if len(keep) != len(lines):
            atomic_write(self.path, lambda p: p.write_text("".join(keep), encoding="utf-8"))
        return len(lines) - len(keep)


def _step_of(line: str) -> int | None:
    """The step of one metrics line; None for a damaged line (e.g. cut short by a kill)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, int) and line.endswith("\n") else None


def plot_history(history: list[dict[str, Any]], path: Path) -> None:
    """Train and validation loss against step, plus validation accuracy when there is one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in history if r["split"] == "train" and r.get("loss") is not None]
    val = [r for r in history if r["split"] == "val"]
    has_acc = any("accuracy" in r for r in val)
    fig, axes = plt.subplots(1, 2 if has_acc else 1, figsize=(10 if has_acc else 6, 4), squeeze=False)
    ax = axes[0][0]
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train", alpha=0.7)
    if val:
        ax.plot([r["step"] for r in val], [r["loss"] for r in val], "o-", label="val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    if has_acc:
        ax2 = axes[0][1]
        ax2.plot([r["step"] for r in val], [r["accuracy"] for r in val], "o-", color="tab:green")
        ax2.set_xlabel("step")
        ax2.set_ylabel("val accuracy")
        ax2.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
