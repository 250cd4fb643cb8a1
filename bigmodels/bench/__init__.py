"""Benchmark any torch model through its forward: size, FLOPs, latency, memory, and reports.

>>> import torch
>>> from bigmodels.bench import count_flops, count_params
>>> model = torch.nn.Linear(8, 4)
>>> count_params(model), count_flops(model, (torch.randn(3, 8),))
(36, 192)
"""

from .measure import (
    MEMORY_KIND_NOTES,
    PeakMemory,
    count_flops,
    count_params,
    environment_info,
    measure_latency,
    peak_memory,
)
from .report import render_from_json, write_report

__all__ = [
    "MEMORY_KIND_NOTES",
    "PeakMemory",
    "count_flops",
    "count_params",
    "environment_info",
    "measure_latency",
    "peak_memory",
    "render_from_json",
    "write_report",
]
