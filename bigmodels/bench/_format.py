"""Human formatting of benchmark figures and the choice of each task's primary metric."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MISSING = "—"


@dataclass(frozen=True)
class PrimaryMetric:
    """The metric a task's table is sorted by."""

    key: str
    higher_is_better: bool

    @property
    def label(self) -> str:
        return metric_label(self.key)

    def sentence(self) -> str:
        better = "higher" if self.higher_is_better else "lower"
        return f"Primary metric: {self.label} ({better} is better); rows are sorted by it."


#: Known tasks; other tasks fall back to :func:`primary_metric`'s heuristic.
PRIMARY_METRICS: dict[str, PrimaryMetric] = {
    "image_classification": PrimaryMetric("test_accuracy", higher_is_better=True),
    "text_classification": PrimaryMetric("test_accuracy", higher_is_better=True),
    "language_modeling": PrimaryMetric("val_loss", higher_is_better=False),
}

# Metric-name fragments for which lower is better.
_LOWER_IS_BETTER = ("loss", "perplexity", "bpc", "error", "wer", "cer")


def _lower_is_better(key: str) -> bool:
    return any(part in key.lower() for part in _LOWER_IS_BETTER)


def primary_metric(task: str, results: list[dict[str, Any]]) -> PrimaryMetric | None:
    """The known primary metric of ``task`` if any result has it, else the first accuracy-like metric,
    else the first loss-like one, else the first metric seen; ``None`` when no result has metrics."""
    keys: list[str] = []
    for r in results:
        for k in r.get("metrics") or {}:
            if k not in keys:
                keys.append(k)
    known = PRIMARY_METRICS.get(task)
    if known is not None and (known.key in keys or not keys):
        return known
    for wanted in ("accuracy", "loss"):
        for k in keys:
            if wanted in k.lower():
                return PrimaryMetric(k, higher_is_better=not _lower_is_better(k))
    return PrimaryMetric(keys[0], higher_is_better=not _lower_is_better(keys[0])) if keys else None


def metric_label(key: str) -> str:
    """``"test_accuracy"`` -> ``"Test accuracy"``."""
    text = key.replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def _scaled(value: float, units: list[tuple[float, str]]) -> str:
    """Three significant digits in the smallest of the ascending ``units`` that keeps them below 1000."""
    for i, (factor, suffix) in enumerate(units):
        text = f"{value / factor:.3g}"
        if abs(float(text)) < 1000 or i == len(units) - 1:
            return text + suffix
    raise AssertionError("units must not be empty")


def fmt_params(n: int | None) -> str:
    """``1_970_000`` -> ``"1.97M"``, ``12_300`` -> ``"12.3K"``, ``512`` -> ``"512"``."""
    if n is None:
        return MISSING
    if abs(n) < 1000:
        return str(int(n))
    return _scaled(float(n), [(1e3, "K"), (1e6, "M"), (1e9, "B"), (1e12, "T")])


def fmt_flops(n: int | float | None) -> str:
    """``2.5e6`` -> ``"2.5 MFLOPs"``."""
    if n is None:
        return MISSING
    return _scaled(float(n), [(1, " FLOPs"), (1e3, " KFLOPs"), (1e6, " MFLOPs"), (1e9, " GFLOPs"),
                              (1e12, " TFLOPs")])


def fmt_bytes(n: int | float | None) -> str:
    """Bytes as MiB (GiB from 1 GiB up): ``3 * 2**20`` -> ``"3.0 MiB"``."""
    if n is None:
        return MISSING
    if abs(n) >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.1f} MiB"


def fmt_number(x: float | int | None, decimals: int = 0) -> str:
    """Thousands separators: ``12345.6`` -> ``"12,346"``."""
    return MISSING if x is None else f"{x:,.{decimals}f}"


def fmt_metric(key: str, value: Any) -> str:
    """Accuracy-like values in [0, 1] as percent, losses to 4 decimals, perplexity to 2."""
    if value is None:
        return MISSING
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return str(value)
    k = key.lower()
    if ("accuracy" in k or k.endswith("_acc") or k.endswith("f1")) and 0 <= value <= 1:
        return f"{100 * value:.2f}%"
    if "perplexity" in k:
        return f"{value:.2f}"
    if "loss" in k or "bpc" in k:
        return f"{value:.4f}"
    return f"{value:.4g}"


def fmt_value(value: Any) -> str:
    """Generic cell: ``None`` -> ``"—"``, floats to 4 significant digits, lists/dicts flattened."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {fmt_value(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "; ".join(fmt_value(v) for v in value) or MISSING
    return str(value)
