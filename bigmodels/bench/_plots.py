"""Benchmark plots as PNG bytes.

Uses ``matplotlib.figure.Figure`` directly rather than pyplot: figures are rendered by the Agg canvas
without touching the global backend or pyplot's figure registry, so this is safe in any process
(headless servers, notebooks, threads) and leaks no figures.
"""

from __future__ import annotations

import io
from typing import Any

from ._format import PrimaryMetric

_DPI = 110


def _figure(n_panels: int, height: float = 3.6) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2 * n_panels, height), dpi=_DPI, layout="constrained")
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    return fig, list(axes)


def _text(name: Any) -> str:
    """A model name as literal plot text ('$' would otherwise start matplotlib mathtext)."""
    return str(name).replace("$", r"\$")


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def metric_vs_params(
    groups: dict[str, list[dict]], primaries: dict[str, PrimaryMetric | None]
) -> bytes | None:
    """One scatter panel per task: primary metric against parameter count (log x), points labelled."""
    panels = []
    for task, rows in groups.items():
        pm = primaries[task]
        if pm is None:
            continue
        pts = [(r.get("params"), (r.get("metrics") or {}).get(pm.key), _text(r.get("model"))) for r in rows]
        pts = [p for p in pts if p[0] and p[1] is not None]
        if pts:
            panels.append((task, pm, pts))
    if not panels:
        return None
    fig, axes = _figure(len(panels))
    for ax, (task, pm, pts) in zip(axes, panels, strict=True):
        xs, ys, names = zip(*pts, strict=True)
        ax.scatter(xs, ys, zorder=3)
        for x, y, name in pts:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xscale("log")
        ax.margins(0.15)  # room for the labels
        ax.set(xlabel="parameters", ylabel=pm.label, title=task)
        ax.grid(True, alpha=0.3)
    return _png(fig)


def throughput(groups: dict[str, list[dict]]) -> bytes | None:
    """One horizontal bar panel per task: training throughput per model."""
    panels = []
    for task, rows in groups.items():
        bars = [(_text(r.get("model")), r["train_throughput"], r.get("throughput_unit")) for r in rows
                if r.get("train_throughput")]
        if bars:
            panels.append((task, bars))
    if not panels:
        return None
    tallest = max(len(bars) for _, bars in panels)
    fig, axes = _figure(len(panels), height=max(2.4, 0.8 + 0.35 * tallest))
    for ax, (task, bars) in zip(axes, panels, strict=True):
        names, values, units = zip(*bars, strict=True)
        ax.bar_label(ax.barh(names, values, zorder=3), labels=[f"{v:,.0f}" for v in values],
                     padding=3, fontsize=8)
        ax.margins(x=0.2)
        ax.invert_yaxis()  # first model on top, like the table
        unit = " / ".join(sorted({u for u in units if u})) or "items/s"
        ax.set(xlabel=f"train throughput ({unit})", title=task)
        ax.grid(True, axis="x", alpha=0.3)
    return _png(fig)


def learning_curves(task: str, rows: list[dict]) -> bytes | None:
    """Validation loss against step for each model (training loss faint behind it)."""
    fig, (ax,) = _figure(1, height=3.8)
    drawn = False
    for i, r in enumerate(rows):
        history = r.get("history") or []
        curves = {
            split: sorted((h["step"], h["loss"]) for h in history if h.get("split") == split
                          and h.get("step") is not None and h.get("loss") is not None)
            for split in ("train", "val")
        }
        labelled = "val" if curves["val"] else "train"  # one legend entry per model
        for split, style in (("train", {"alpha": 0.3, "linewidth": 1}), ("val", {"marker": "o", "ms": 3})):
            if curves[split]:
                steps, losses = zip(*curves[split], strict=True)
                label = _text(r.get("model")) if split == labelled else None
                ax.plot(steps, losses, color=f"C{i % 10}", label=label, **style)
                drawn = True
    if not drawn:
        return None
    ax.set(xlabel="step", ylabel="loss (val solid, train faint)", title=task)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _png(fig)
