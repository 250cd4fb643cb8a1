"""Benchmark reports: one Markdown file, one self-contained HTML file, PNG plots and ``results.json``.

The report is built once as a list of blocks (heading, paragraph, list, table, image) and rendered by
two small writers, so the Markdown and the HTML always say the same thing.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from bigmodels.errors import DataError

from . import _plots
from ._format import (
    MISSING,
    PrimaryMetric,
    fmt_bytes,
    fmt_flops,
    fmt_metric,
    fmt_number,
    fmt_params,
    fmt_value,
    metric_label,
    primary_metric,
)
from .measure import MEMORY_KIND_NOTES

logger = logging.getLogger(__name__)

_FORMAT_VERSION = 1
_ERROR_CHARS = 300  # error text is cut here in tables; results.json keeps it whole
_FLOPS_NOTE = ("FLOPs: forward pass per sample, a multiply-add counted as 2, matrix products and "
               "convolutions only (torch.utils.flop_counter, plus an analytic count for recurrent layers).")

# A block is a tuple tagged by its first item: ("h", level, text), ("p", text), ("ul", items),
# ("table", headers, rows, numeric_flags), ("img", filename, alt).
Block = tuple


class Column(NamedTuple):
    header: str
    cell: Callable[[dict], str]
    numeric: bool = True  # right-aligned
    always: bool = False  # shown even when empty in every row


def _cell(key: str, fmt: Callable[[Any], str]) -> Callable[[dict], str]:
    return lambda r: fmt(r.get(key)) if r.get(key) is not None else MISSING


def _throughput(r: dict) -> str:
    value = r.get("train_throughput")
    if value is None:
        return MISSING
    return f"{fmt_number(value)} {r.get('throughput_unit') or ''}".strip()


def _batch_latency(r: dict) -> str:
    value = r.get("batch_latency_ms")
    if value is None:
        return MISSING
    batch = r.get("latency_batch")
    return f"{value:.2f} (b={batch})" if batch is not None else f"{value:.2f}"


def _memory_kind(r: dict) -> str:
    return str(r.get("memory_kind") or MISSING) if r.get("peak_memory_bytes") is not None else MISSING


def _error(r: dict) -> str:
    text = " ".join(str(r.get("error") or "").split())
    if not text:
        return MISSING
    return text if len(text) <= _ERROR_CHARS else text[: _ERROR_CHARS - 1] + "…"


def _columns(pm: PrimaryMetric | None, metric_keys: list[str]) -> list[Column]:
    ordered = ([pm.key] if pm else []) + [k for k in metric_keys if not pm or k != pm.key]
    metric_cols = [
        Column(metric_label(k), (lambda r, k=k: fmt_metric(k, (r.get("metrics") or {}).get(k))), always=True)
        for k in ordered
    ]
    return [
        Column("Model", _cell("model", str), numeric=False, always=True),
        Column("Family", _cell("family", str), numeric=False),
        *metric_cols,
        Column("Params", _cell("params", fmt_params)),
        Column("FLOPs/sample", _cell("flops_per_sample", fmt_flops)),
        Column("Train throughput", _throughput),
        Column("Train time (s)", _cell("train_seconds", lambda v: fmt_number(v, 1))),
        Column("Steps", _cell("steps", fmt_number)),
        Column("Epochs", _cell("epochs", fmt_value)),
        Column("Latency b=1 (ms)", _cell("latency_ms", lambda v: f"{v:.2f}")),
        Column("Batch latency (ms)", _batch_latency),
        Column("Peak memory", _cell("peak_memory_bytes", fmt_bytes)),
        Column("Memory kind", _memory_kind, numeric=False),
        Column("Error", _error, numeric=False),
    ]


def _sort_key(pm: PrimaryMetric | None) -> Callable[[dict], tuple]:
    def key(r: dict) -> tuple:
        value = (r.get("metrics") or {}).get(pm.key) if pm else None
        if not isinstance(value, (int, float)) or math.isnan(value):  # unmeasured or diverged: last
            return (1, 0.0, str(r.get("model")))
        return (0, -value if pm.higher_is_better else value, str(r.get("model")))

    return key


def _task_table(rows: list[dict], pm: PrimaryMetric | None) -> Block:
    """The task's table; columns empty in every row are left out (Model and metrics always stay)."""
    metric_keys = sorted({k for r in rows for k in (r.get("metrics") or {})})
    columns = _columns(pm, metric_keys)
    cells = [[col.cell(r) for col in columns] for r in rows]
    keep = [i for i, col in enumerate(columns) if col.always or any(row[i] != MISSING for row in cells)]
    return ("table", [columns[i].header for i in keep], [[row[i] for i in keep] for row in cells],
            [columns[i].numeric for i in keep])


def _ms(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else MISSING


def _onnx_table(results: list[dict]) -> Block | None:
    """PyTorch and ONNX Runtime latency side by side (rows whose result has an ``onnx`` entry)."""
    rows = []
    for r in results:
        o = r.get("onnx")
        if not isinstance(o, dict):
            continue
        # PyTorch timed beside ONNX Runtime (and at the fixed length of an export that fixed it); older results
        # without that figure fall back to the main table's
        torch_one = o.get("torch_latency_ms", r.get("latency_ms"))
        torch_batch = _batch_latency({**r, "batch_latency_ms": o.get("torch_batch_latency_ms",
                                                                     r.get("batch_latency_ms"))})
        ratio = (f"{torch_one / o['latency_ms']:.2f}x" if isinstance(torch_one, (int, float))
                 and isinstance(o.get("latency_ms"), (int, float)) and o["latency_ms"] > 0 else MISSING)
        note = o.get("error") or o.get("note") or (f"parity {o['parity']:.1e}, export {o['export_seconds']:.1f} s"
                                                   if "parity" in o else "")
        if o.get("length"):
            note += (f"; both sides at {o['length']} tokens: the export fixes the length (nn.RNN unrolled over "
                     "time)")
        rows.append([str(r.get("model")), str(r.get("family") or MISSING), _ms(torch_one),
                     _ms(o.get("latency_ms")), ratio, torch_batch,
                     _ms(o.get("batch_latency_ms")), _error({"error": note}) if note else MISSING])
    if not rows:
        return None
    return ("table", ["Model", "Family", "PyTorch b=1 (ms)", "ONNX Runtime b=1 (ms)", "Speed-up b=1",
                      "PyTorch batch (ms)", "ONNX Runtime batch (ms)", "Note"],
            rows, [False, False, True, True, True, True, True, False])


def _ratio(value: Any) -> str:
    return f"{value:.2f}x" if isinstance(value, (int, float)) else MISSING


def _compression_table(results: list[dict]) -> Block | None:
    """One row per model and compression method: size and speed ratios against the original, the metric lost."""
    rows = []
    for r in results:
        c = r.get("compression")
        if isinstance(c, dict) or not c:  # a note, or an older result without the section
            continue
        for m in c:
            delta = m.get("metric_delta") or {}
            lost = ", ".join(f"{k} {v:+.4f}" for k, v in delta.items()) or MISSING
            rows.append([str(r.get("model")), str(r.get("family") or MISSING), str(m.get("method")),
                         _ratio(m.get("params_ratio")), _ratio(m.get("flops_ratio")), _ratio(m.get("latency_ms_ratio")),
                         _ratio(m.get("batch_latency_ms_ratio")), lost, _error(m) if m.get("error") else MISSING])
    if not rows:
        return None
    return ("table", ["Model", "Family", "Method", "Parameters", "FLOPs", "Latency b=1", "Latency batch",
                      "Validation metric change", "Note"],
            rows, [False, False, False, True, True, True, True, False, False])


def _margin(value: Any) -> str:
    return f"{value:+.3f}" if isinstance(value, (int, float)) else MISSING


def _auc_pair(row: dict, key: str) -> str:
    value, rand = row.get(f"{key}_auc"), row.get(f"random_{key}_auc")
    return f"{value:.3f} ({rand:.3f})" if isinstance(value, (int, float)) and isinstance(rand, (int, float)) \
        else MISSING


def _faithfulness_table(results: list[dict]) -> Block | None:
    """One row per model and attribution method: deletion / insertion AUC against random, with the margins."""
    rows = []
    for r in results:
        f = r.get("faithfulness")
        if isinstance(f, dict):  # a note: no method applies
            rows.append([str(r.get("model")), str(r.get("family") or MISSING), MISSING, MISSING, MISSING, MISSING,
                         MISSING, MISSING, MISSING, _error({"error": f.get("note")})])
            continue
        for m in f or []:
            good = (isinstance(m.get("deletion_margin"), (int, float)) and isinstance(m.get("insertion_margin"),
                                                                                      (int, float)))
            verdict = ("yes" if m["deletion_margin"] > 0 and m["insertion_margin"] > 0 else "no") if good else MISSING
            rows.append([str(r.get("model")), str(r.get("family") or MISSING), str(m.get("method")),
                         str(m.get("examples", MISSING)), _auc_pair(m, "deletion"), _auc_pair(m, "insertion"),
                         _margin(m.get("deletion_margin")), _margin(m.get("insertion_margin")), verdict,
                         _error(m)])
    if not rows:
        return None
    return ("table", ["Model", "Family", "Method", "Inputs", "Deletion AUC (random)", "Insertion AUC (random)",
                      "Deletion margin", "Insertion margin", "Better than random", "Note"],
            rows, [False, False, False, True, True, True, True, True, False, False])


def _env_value(key: str, value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and key.endswith("bytes"):
        return fmt_bytes(value)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_env_value(k, v)}" for k, v in value.items())
    if isinstance(value, list):
        return "; ".join(_env_value(key, v) for v in value) or MISSING
    return fmt_value(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "task"


def _group(results: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault(r.get("task") or "unspecified", []).append(r)
    return groups


def _auto_notes(results: list[dict]) -> list[str]:
    notes = []
    if any(r.get("flops_per_sample") is not None for r in results):
        notes.append(_FLOPS_NOTE)
    kinds = sorted({r["memory_kind"] for r in results if r.get("memory_kind")})
    notes += [MEMORY_KIND_NOTES.get(k, f"{k}: memory figure as reported by the benchmark.") for k in kinds]
    return notes


# the sections after the per-task tables: (heading, what it measures, the table from the result rows or None)
_SECTIONS = (
    ("ONNX Runtime latency",
     "Each trained model exported with bigmodels.export.export_onnx (parity with PyTorch checked at export) and "
     "loaded back with bigmodels.load; PyTorch timed again right before it on the same inputs, so both sides see "
     "the same machine. Speed-up: PyTorch latency over ONNX Runtime's (above 1: ONNX Runtime is faster).",
     _onnx_table),
    ("Compression",
     "Each trained model compressed in two ways and measured beside the original: int8 dynamic quantization of "
     "its Linear layers (torchao) and structured pruning of half its attention heads / FFN units / channels (L2 "
     "importance) with no fine-tuning after (the metric change is what fine-tuning would have to win back; see "
     "`bigmodels compress` and the recipes). Figures are compressed / original: below 1 is smaller or faster.",
     _compression_table),
    ("Faithfulness of the attributions",
     "bigmodels.explain on a few validation inputs of each trained model (the predicted class): deletion and "
     "insertion curves of the target's probability (units removed or restored most important first), their areas "
     "against the mean of random orders. Margins: random - deletion and insertion - random; both positive: better "
     "than chance.",
     _faithfulness_table),
)


def _blocks(title: str, groups: dict[str, list[dict]], primaries: dict[str, PrimaryMetric | None],
            env: dict, notes: list[str], plots: dict[str, bytes]) -> list[Block]:
    blocks: list[Block] = [("h", 1, title)]
    for task, rows in groups.items():
        pm = primaries[task]
        blocks.append(("h", 2, task))
        blocks.append(("p", pm.sentence() if pm else "No metrics were recorded for this task."))
        blocks.append(_task_table(rows, pm))
        curves = f"curves_{_slug(task)}.png"
        if curves in plots:
            blocks.append(("img", curves, f"learning curves for {task}"))
    summary = [(name, alt) for name, alt in (("accuracy_vs_params.png", "primary metric vs parameters"),
                                             ("throughput.png", "training throughput")) if name in plots]
    all_rows = [r for rows in groups.values() for r in rows]
    for heading, text, table in _SECTIONS:
        block = table(all_rows)
        if block is not None:
            blocks += [("h", 2, heading), ("p", text), block]
    if summary:
        blocks.append(("h", 2, "Plots"))
        blocks += [("img", name, alt) for name, alt in summary]
    blocks.append(("h", 2, "Environment"))
    env_rows = [[k, _env_value(k, v)] for k, v in env.items()]
    blocks.append(("table", ["Key", "Value"], env_rows, [False, False]))
    if notes:
        blocks.append(("h", 2, "Notes"))
        blocks.append(("ul", notes))
    return blocks


def _md_cell(text: str) -> str:
    """One line, pipes escaped, and no raw HTML (Markdown renderers would interpret it)."""
    return html.escape(" ".join(text.split()), quote=False).replace("|", "\\|")


def _to_markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for block in blocks:
        tag = block[0]
        if tag == "h":
            out.append(f"{'#' * block[1]} {block[2]}")
        elif tag == "p":
            out.append(block[1])
        elif tag == "ul":
            out.append("\n".join(f"- {item}" for item in block[1]))
        elif tag == "table":
            _, headers, rows, numeric = block
            lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |",
                     "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            out.append("\n".join(lines))
        elif tag == "img":
            out.append(f"![{block[2]}]({block[1]})")
    return "\n\n".join(out) + "\n"


_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #1d1d1f; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }
th, td { border: 1px solid #d0d0d5; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f2f2f5; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafafc; } img { max-width: 100%; display: block; margin: 0.5rem 0; }
"""


def _to_html(blocks: list[Block], title: str, plots: dict[str, bytes]) -> str:
    esc = html.escape
    body: list[str] = []
    for block in blocks:
        tag = block[0]
        if tag == "h":
            body.append(f"<h{block[1]}>{esc(block[2])}</h{block[1]}>")
        elif tag == "p":
            body.append(f"<p>{esc(block[1])}</p>")
        elif tag == "ul":
            body.append("<ul>" + "".join(f"<li>{esc(item)}</li>" for item in block[1]) + "</ul>")
        elif tag == "table":
            _, headers, rows, numeric = block
            head = "".join(f"<th>{esc(h)}</th>" for h in headers)
            trs = ["<tr>" + "".join(f'<td{" class=num" if n else ""}>{esc(c)}</td>'
                                    for c, n in zip(row, numeric, strict=True)) + "</tr>" for row in rows]
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(trs)}</tbody></table>")
        elif tag == "img":
            data = base64.b64encode(plots[block[1]]).decode("ascii")
            body.append(f'<img src="data:image/png;base64,{data}" alt="{esc(block[2])}">')
    head = f'<meta charset="utf-8">\n<title>{esc(title)}</title>\n<style>{_CSS}</style>'
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n{head}\n</head>\n<body>\n'
            + "\n".join(body) + "\n</body>\n</html>\n")


def _json_default(obj: Any) -> Any:
    """numpy / torch values become plain numbers or lists; anything else (paths, dtypes) its str."""
    return obj.tolist() if hasattr(obj, "tolist") else str(obj)


def write_report(results: list[dict], out_dir: Path, *, title: str, env: dict,
                 notes: list[str] | None = None) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` (self-contained), PNG plots and ``results.json`` to ``out_dir``.

    Results are grouped by ``task``, one table per task sorted by its primary metric; ``None`` shows as
    "—" and a result with ``error`` set gets a row that says so. Returns ``{name: path}`` for every file
    written ("markdown", "html", "json", and each plot by its file stem).

    >>> from bigmodels.bench import environment_info
    >>> row = {"model": "mlp_tiny", "task": "image_classification", "params": 12345,
    ...        "metrics": {"test_accuracy": 0.97}}
    >>> paths = write_report([row], Path("bench_out"), title="Demo", env=environment_info())  # doctest: +SKIP
    >>> paths["html"].name  # doctest: +SKIP
    'report.html'
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = _group(results)
    primaries = {task: primary_metric(task, rows) for task, rows in groups.items()}
    for task, rows in groups.items():
        rows.sort(key=_sort_key(primaries[task]))

    plots: dict[str, bytes] = {}
    for name, png in [("accuracy_vs_params.png", _plots.metric_vs_params(groups, primaries)),
                      ("throughput.png", _plots.throughput(groups))] + [
                      (f"curves_{_slug(task)}.png", _plots.learning_curves(task, rows))
                      for task, rows in groups.items()]:
        if png is not None:
            plots[name] = png

    blocks = _blocks(title, groups, primaries, env, list(notes or []) + _auto_notes(results), plots)
    paths = {"markdown": out_dir / "report.md", "html": out_dir / "report.html",
             "json": out_dir / "results.json"}
    paths["markdown"].write_text(_to_markdown(blocks), encoding="utf-8")
    paths["html"].write_text(_to_html(blocks, title, plots), encoding="utf-8")
    payload = {"format_version": _FORMAT_VERSION, "title": title, "env": env, "notes": list(notes or []),
               "results": results}
    paths["json"].write_text(json.dumps(payload, indent=2, default=_json_default), encoding="utf-8")
    for name, png in plots.items():
        paths[name.removesuffix(".png")] = out_dir / name
        (out_dir / name).write_bytes(png)
    logger.info("wrote benchmark report to %s (%d results, %d plots)", out_dir, len(results), len(plots))
    return paths


def render_from_json(path: Path, out_dir: Path) -> dict[str, Path]:
    """Re-render a report from a ``results.json`` written by :func:`write_report`.

    >>> render_from_json(Path("bench_out/results.json"), Path("bench_out2"))  # doctest: +SKIP
    """
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read benchmark results {str(path)!r}: {exc}") from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("results"), list):
        raise DataError(f"{str(path)!r} is not a bigmodels results.json (no 'results' list); "
                        "pass the results.json that write_report wrote")
    return write_report(payload["results"], Path(out_dir), title=payload.get("title") or "Benchmark report",
                        env=payload.get("env") or {}, notes=payload.get("notes"))
