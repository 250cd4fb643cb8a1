"""Explanations shown where people would rather look than read: heatmaps over images (PNG, matplotlib),
token-coloured HTML for texts, and one self-contained HTML report per call (images inlined as base64, no
external URL, so the file can be mailed or opened offline).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .._files import atomic_write
from ._core import Explanation

__all__ = ["heatmap_png", "token_png", "token_html", "write_report"]


def _display_image(x: torch.Tensor) -> torch.Tensor:
    """A normalised image (C, H, W) -> (H, W, C) in [0, 1] for display (each channel stretched to its range)."""
    x = x.float()
    lo = x.amin(dim=(1, 2), keepdim=True)
    hi = x.amax(dim=(1, 2), keepdim=True)
    x = (x - lo) / (hi - lo).clamp(min=1e-12)
    return x.permute(1, 2, 0) if x.shape[0] == 3 else x[0]


def _png(fig: Any, path: str | Path | None) -> bytes:
    """A matplotlib figure's PNG bytes, also written to ``path`` when given."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def heatmap_png(e: Explanation, path: str | Path | None = None, *, dpi: int = 100) -> bytes:
    """The image next to its attributions as a heatmap over it (diverging colours for signed attributions);
    the PNG's bytes, also written to ``path`` when given."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    heat = e.heatmap().float()
    signed = bool((heat < 0).any())
    lim = float(heat.abs().max()) or 1.0
    fig = Figure(figsize=(6, 3), dpi=dpi)
    left, right = fig.subplots(1, 2)
    image = _display_image(e.inputs)
    for ax in (left, right):
        ax.imshow(image.numpy(), cmap="gray" if image.dim() == 2 else None)
        ax.set_axis_off()
    right.imshow(heat.numpy(), cmap="bwr" if signed else "jet", alpha=0.55, vmin=-lim if signed else 0, vmax=lim)
    left.set_title(f"predicted: {e.predicted_label or e.predicted}", fontsize=9)
    right.set_title(f"{e.method} for {e.target_label or e.target}", fontsize=9)
    fig.tight_layout()
    return _png(fig, path)


def token_png(e: Explanation, path: str | Path | None = None, *, words: bool = True, width: float = 7.0,
              dpi: int = 100) -> bytes:
    """A text's words (or word pieces, ``words=False``) on backgrounds coloured by their attribution (red for
    evidence for the target, blue against), wrapped to ``width`` inches, with the prediction as the title; the
    PNG's bytes, also written to ``path`` when given."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    items = _items(e, words)
    scale = max((abs(v) for _, v in items), default=0.0)
    fig = Figure(figsize=(width, 1.0), dpi=dpi)
    renderer = FigureCanvasAgg(fig).get_renderer()
    line_h, pad, x, y = 0.32, 0.08, 0.1, 0.0  # inches
    placed = []
    for text, value in items:
        a = min(abs(value) / scale, 1.0) if scale > 0 else 0.0
        colour = (0.86, 0.16, 0.16, a) if value >= 0 else (0.16, 0.35, 0.86, a)
        t = fig.text(0, 0, text, fontsize=11, bbox={"facecolor": colour, "edgecolor": "none", "pad": 1.5})
        w = t.get_window_extent(renderer).width / dpi
        if x + w > width - 0.1 and x > 0.1:
            x, y = 0.1, y + line_h
        placed.append((t, x, y))
        x += w + pad
    title_h = 0.35
    height = title_h + y + line_h + 0.15
    fig.set_size_inches(width, height)
    for t, tx, ty in placed:
        t.set_position((tx / width, 1 - (title_h + ty + line_h * 0.75) / height))
    label = e.target_label or e.target
    legend = ("darker: more attended (rollout, the same for every class)" if e.method == "attention"
              else "red: for, blue: against")
    fig.text(0.1 / width, 1 - 0.25 / height, f"{e.method} for {label} (predicted {e.predicted_label or e.predicted}, "
             f"p={e.score:.3f}); {legend}", fontsize=9, color="#444")
    return _png(fig, path)


def _items(e: Explanation, words: bool) -> list[tuple[str, float]]:
    if words and e.words is not None and e.word_attributions is not None:
        return list(zip(e.words, e.word_attributions.tolist(), strict=True))
    return list(zip(e.tokens or [], e.attributions.tolist(), strict=True))


def _colour(value: float, scale: float) -> str:
    """Red for positive, blue for negative evidence, its opacity the value's share of the largest."""
    a = min(abs(value) / scale, 1.0) if scale > 0 else 0.0
    return f"rgba(220,40,40,{a:.3f})" if value >= 0 else f"rgba(40,90,220,{a:.3f})"


def token_html(e: Explanation, *, words: bool = True) -> str:
    """A text's words (or word pieces, ``words=False``) as coloured spans, the attribution in each title."""
    items = _items(e, words)
    scale = max((abs(v) for _, v in items), default=0.0)
    spans = [f'<span class="tok" style="background:{_colour(v, scale)}" title="{v:.4g}">{html.escape(t)}</span>'
             for t, v in items]
    return '<p class="text">' + " ".join(spans) + "</p>"


_STYLE = """body{font-family:sans-serif;margin:2em;max-width:60em}
.tok{padding:1px 3px;border-radius:3px}.text{line-height:2}
table{border-collapse:collapse;display:block;overflow-x:auto;max-width:100%}
td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}section{margin-bottom:2em}"""


def _table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(k))}</td>" for k in keys) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))


def _activations(report: dict[str, Any]) -> str:
    """The activation analysis (see :func:`~bigmodels.explain.activation_report`): statistics, probes, the PCA
    grid (inlined PNG)."""
    parts = ["<section><h2>Activations</h2><h3>Per-layer statistics</h3>", _table(report["stats"]),
             "<p><small>dead: share of units never &gt; 0 (ReLU-family outputs); saturated: share of units near "
             "their activation's bound on 95% of their values; - where it does not apply</small></p>"]
    if report.get("probes"):
        parts += ["<h3>Linear probes (how well the label can be read from each layer)</h3>", _table(report["probes"])]
    projections = report.get("projections")
    if projections is not None:
        data = base64.b64encode(projections.png).decode("ascii")
        parts.append("<h3>PCA of each layer, coloured by label</h3>"
                     f"<img alt='layer projections' src='data:image/png;base64,{data}'>")
    return "".join(parts) + "</section>"


def write_report(explanations: Sequence[Explanation], path: str | Path, *, title: str = "Explanations",
                 faithfulness: Sequence[dict[str, Any]] | None = None,
                 activations: dict[str, Any] | None = None) -> Path:
    """One self-contained HTML page: per explanation its heatmap (inlined PNG) or coloured words, the
    prediction and settings (and integrated gradients' completeness gap); the methods ranked by
    ``faithfulness`` rows (see :func:`~bigmodels.explain.rank_methods`) when given; the ``activations``
    analysis (:func:`~bigmodels.explain.activation_report`) when given."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    if faithfulness:
        parts.append("<section><h2>Faithfulness (best first)</h2>" + _table(faithfulness) + "</section>")
    if activations:
        parts.append(_activations(activations))
    for e in explanations:
        head = (f"<h2>{html.escape(e.method)}</h2><p>predicted <b>{html.escape(str(e.predicted_label or e.predicted))}"
                f"</b>, target <b>{html.escape(str(e.target_label or e.target))}</b>"
                + (f" (p = {e.score:.3f})" if e.score == e.score else "") + "</p>")
        if e.delta is not None:
            head += (f"<p>completeness: sum of attributions - (f(x) - f(baseline)) = {e.delta:.3g} "
                     f"({100 * e.relative_delta:.2f}%)</p>")
        if e.modality == "image":
            data = base64.b64encode(heatmap_png(e)).decode("ascii")
            body = f"<img alt='{html.escape(e.method)} heatmap' src='data:image/png;base64,{data}'>"
        else:
            body = token_html(e) + "<details><summary>word pieces</summary>" + token_html(e, words=False) + "</details>"
        settings = {k: v for k, v in e.settings.items() if v is not None}
        shown = ", ".join(f"{k}={v}" for k, v in settings.items())  # nothing when the method has no settings
        parts.append(f"<section>{head}{body}" + (f"<p><small>{html.escape(shown)}</small></p>" if shown else "")
                     + "</section>")
    parts.append("</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(parts)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path
