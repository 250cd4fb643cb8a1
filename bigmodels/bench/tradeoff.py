"""The trade-off table of a compression: what it costs (the task metric) and what it buys (size on disk,
parameters, FLOPs, latency at batch 1 and batched), each as the original's figure, the compressed one's and the
ratio or difference, written as Markdown, JSON and a small plot.

>>> import copy, bigmodels
>>> from bigmodels.compress import prune_structured_
>>> original = bigmodels.create_model("resnet_mini")
>>> pruned = copy.deepcopy(original); _ = prune_structured_(pruned, 0.5)
>>> table = tradeoff(original, pruned, batch=4, iters=2)
>>> table["rows"]["params"]["ratio"] < 0.5
True
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..io import save
from ..models._contract import call, example_inputs
from .measure import count_flops, count_params, measure_latency

__all__ = ["measure", "tradeoff", "write_tradeoff", "to_markdown"]

log = logging.getLogger(__name__)

# what a row measures, its unit, and whether lower is better (the metric's direction comes from its name)
_ROWS = {
    "size_mb": ("size on disk (MB)", True),
    "params": ("parameters", True),
    "flops": ("forward FLOPs (batch 1)", True),
    "latency_ms_b1": ("latency, batch 1 (ms)", True),
    "latency_ms_batched": ("latency, batched (ms)", True),
}


class _Call(nn.Module):
    """``model`` called on its batch form (a tensor, or an encoder-decoder's keyword arguments)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return call(self.model, x)


def _size_mb(model: nn.Module) -> float | None:
    try:
        with tempfile.TemporaryDirectory() as d:
            path = save(model, d)
            return sum(p.stat().st_size for p in Path(path).glob("*.safetensors")) / 1e6
    except Exception as e:  # noqa: BLE001 (a model that cannot be saved still gets its other figures)
        log.warning("size on disk not measured: %s", e)
        return None


def measure(model: nn.Module, *, batch: int = 32, seq_len: int = 64, iters: int = 10,
            metric: Callable[[nn.Module], dict[str, float]] | None = None) -> dict[str, Any]:
    """Size on disk, parameters, FLOPs at batch 1, latency at batch 1 and at ``batch`` (inputs of ``seq_len``
    tokens for text models), and ``metric(model)`` when given."""
    wrapped = _Call(model).eval()
    x1 = example_inputs(model, batch=1, seq_len=seq_len)
    xb = example_inputs(model, batch=batch, seq_len=seq_len)
    try:
        flops = count_flops(wrapped, (x1,))
    except Exception as e:  # noqa: BLE001 (a quantized tensor the counter cannot dispatch)
        log.warning("FLOPs not counted: %s", e)
        flops = None
    out: dict[str, Any] = {
        "size_mb": _size_mb(model),
        "params": count_params(model),
        "flops": flops,
        "latency_ms_b1": measure_latency(wrapped, (x1,), iters=iters, max_seconds=30)["latency_ms_median"],
        "latency_ms_batched": measure_latency(wrapped, (xb,), iters=iters, max_seconds=60)["latency_ms_median"],
    }
    if metric is not None:
        out["metrics"] = metric(model)
    return out


def tradeoff(original: nn.Module, compressed: nn.Module, *, batch: int = 32, seq_len: int = 64, iters: int = 10,
             metric: Callable[[nn.Module], dict[str, float]] | None = None,
             description: dict[str, Any] | None = None) -> dict[str, Any]:
    """Measure both models side by side: ``{"rows": {measure: {original, compressed, ratio}}, "metrics":
    {name: {original, compressed, delta}}, "batch", "threads", ...}``. The ratio is compressed / original (lower
    is smaller / faster); the metric's delta is compressed - original."""
    a = measure(original, batch=batch, seq_len=seq_len, iters=iters, metric=metric)
    b = measure(compressed, batch=batch, seq_len=seq_len, iters=iters, metric=metric)
    rows = {}
    for key in _ROWS:
        va, vb = a[key], b[key]
        rows[key] = {"original": va, "compressed": vb,
                     "ratio": (vb / va) if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and va
                     else None}
    metrics = {}
    for name, va in (a.get("metrics") or {}).items():
        vb = (b.get("metrics") or {}).get(name)
        if isinstance(va, (int, float)) and isinstance(vb, (int, float)):
            metrics[name] = {"original": va, "compressed": vb, "delta": vb - va}
    return {"rows": rows, "metrics": metrics, "batch": batch, "seq_len": seq_len,
            "threads": torch.get_num_threads(), "compression": description or {}}


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) >= 1000):
        return f"{int(v):,}"
    return f"{v:.4g}"


def to_markdown(table: dict[str, Any]) -> str:
    """The table as Markdown: one row per measure, then the task metrics."""
    lines = ["| measure | original | compressed | compressed / original |", "|---|---:|---:|---:|"]
    for key, (label, _) in _ROWS.items():
        r = table["rows"][key]
        ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.3f}x"
        lines.append(f"| {label} | {_fmt(r['original'])} | {_fmt(r['compressed'])} | {ratio} |")
    if table["metrics"]:
        lines += ["", "| task metric | original | compressed | delta |", "|---|---:|---:|---:|"]
        lines += [f"| {name} | {m['original']:.4f} | {m['compressed']:.4f} | {m['delta']:+.4f} |"
                  for name, m in table["metrics"].items()]
    note = (f"Latency: median of timed forward passes, batch 1 and batch {table['batch']} (text: "
            f"{table['seq_len']} tokens), {table['threads']} CPU threads, eval mode, inference_mode.")
    return "\n".join([*lines, "", note, ""])


def write_tradeoff(table: dict[str, Any], out: str | Path) -> list[Path]:
    """Write ``compression.md``, ``compression.json`` and ``compression.png`` (the ratios as bars) to ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "compression.md", out / "compression.json", out / "compression.png"]
    paths[0].write_text(to_markdown(table))
    paths[1].write_text(json.dumps(table, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [label for key, (label, _) in _ROWS.items() if table["rows"][key]["ratio"] is not None]
    ratios = [table["rows"][key]["ratio"] for key in _ROWS if table["rows"][key]["ratio"] is not None]
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.45 * len(labels)))
    ax.barh(labels, ratios, color=["tab:green" if r < 1 else "tab:red" for r in ratios])
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_xlabel("compressed / original (lower is better)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(paths[2], dpi=100)
    plt.close(fig)
    return paths

