"""Measure any torch model through its forward: parameters, FLOPs, latency, peak memory, environment.

Nothing here knows a model family; every function takes an ``nn.Module`` and example inputs.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence
from torch.utils.flop_counter import FlopCounterMode

from .._files import cpu_info

logger = logging.getLogger(__name__)

MemoryKind = Literal["cuda_allocated", "cpu_rss_delta"]

#: What each ``memory_kind`` figure means; the report prints these as notes.
MEMORY_KIND_NOTES: dict[str, str] = {
    "cuda_allocated": (
        "cuda_allocated: torch.cuda.max_memory_allocated() after reset_peak_memory_stats(), i.e. the peak "
        "of tensors allocated by PyTorch during the measured block, including weights already resident; "
        "the caching allocator's reserved-but-free memory is not included."
    ),
    "cpu_rss_delta": (
        "cpu_rss_delta: growth of the process peak resident set size (getrusage ru_maxrss) during the "
        "measured block. It is a high-water-mark delta: an underestimate (down to 0) when the process had "
        "already reached a higher peak earlier. Run each measurement in a fresh process for clean figures."
    ),
}

# Gate count per RNN mode: the number of (I + H) -> H matrix products per step (PyTorch docs for nn.LSTM/GRU).
_RNN_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared parameters counted once).

    >>> count_params(torch.nn.Linear(3, 2))
    8
    """
    total = 0
    for name, p in model.named_parameters():
        if isinstance(p, nn.parameter.UninitializedParameter):
            raise ValueError(f"parameter {name!r} is lazy and uninitialized; run one forward pass first")
        if p.requires_grad or not trainable_only:
            total += p.numel()
    return total


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode and restore each one's own flag afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _as_tuple(example_inputs: Any) -> tuple:
    return example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)


def _rnn_flops(module: nn.RNNBase, inp: torch.Tensor | PackedSequence) -> int:
    """Analytic forward FLOPs of an ``nn.RNNBase`` (multiply-add = 2), matrix products only.

    Per (batch, time) pair, layer and direction: ``2*G*H*(I + H_out)`` for the gates, plus ``2*H*P`` for
    the LSTM projection when ``proj_size = P > 0`` (then ``H_out = P``). Elementwise gate arithmetic is
    not counted, matching FlopCounterMode, which counts only matmuls and convolutions.
    """
    if isinstance(inp, PackedSequence):
        pairs = int(inp.batch_sizes.sum())
    elif inp.dim() == 2:  # unbatched (T, I)
        pairs = inp.shape[0]
    else:  # (T, B, I) or (B, T, I) with batch_first: the product is the same
        pairs = inp.shape[0] * inp.shape[1]
    gates = _RNN_GATES[module.mode]
    hidden, proj = module.hidden_size, module.proj_size
    h_out = proj or hidden
    directions = 2 if module.bidirectional else 1
    per_pair = 0
    for layer in range(module.num_layers):
        in_size = module.input_size if layer == 0 else h_out * directions
        per_dir = 2 * gates * hidden * (in_size + h_out) + (2 * hidden * proj if proj else 0)
        per_pair += per_dir * directions
    return pairs * per_pair


def count_flops(model: nn.Module, example_inputs: tuple) -> int:
    """Forward FLOPs of ``model(*example_inputs)`` for the whole batch; a multiply-add counts as 2.

    Uses ``torch.utils.flop_counter.FlopCounterMode`` in eval mode under ``no_grad``. Recurrent layers
    (``nn.RNNBase``) the counter does not see (LSTM on torch 2.13) get the analytic count of
    :func:`_rnn_flops` instead; those it does see (GRU, RNN) are not counted twice.

    >>> count_flops(torch.nn.Linear(8, 4), (torch.randn(3, 8),))
    192
    """
    counter = FlopCounterMode(display=False)
    extra: list[int] = []
    seen_before: dict[int, int] = {}

    def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        seen_before[id(module)] = counter.get_total_flops()

    def post_hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if counter.get_total_flops() > seen_before.pop(id(module)):
            return  # the counter saw this layer's matmuls itself
        inp = args[0] if args else kwargs["input"]
        extra.append(_rnn_flops(module, inp))

    handles = []
    for m in model.modules():
        if isinstance(m, nn.RNNBase):
            handles.append(m.register_forward_pre_hook(pre_hook, with_kwargs=True))
            handles.append(m.register_forward_hook(post_hook, with_kwargs=True))
    try:
        with _eval_mode(model), torch.no_grad(), counter:
            model(*_as_tuple(example_inputs))
    finally:
        for h in handles:
            h.remove()
    return int(counter.get_total_flops()) + sum(extra)


def _on_cuda(model: nn.Module, inputs: tuple) -> bool:
    def walk(x: Any) -> Iterator[torch.Tensor]:
        if isinstance(x, torch.Tensor):
            yield x
        elif isinstance(x, (tuple, list)):
            for item in x:
                yield from walk(item)
        elif isinstance(x, dict):
            for item in x.values():
                yield from walk(item)

    tensors = list(walk(inputs)) + list(model.parameters())
    return any(t.is_cuda for t in tensors)


def measure_latency(
    model: nn.Module,
    example_inputs: tuple,
    *,
    warmup: int = 3,
    iters: int = 10,
    max_seconds: float = 5.0,
) -> dict[str, float | int]:
    """Wall-clock inference latency of one forward call (eval mode, ``inference_mode``).

    Runs ``warmup`` untimed calls, then up to ``iters`` timed ones, stopping early once ``max_seconds``
    (warm-up included) have passed; at least one call is always timed. CUDA is synchronised around
    each call when the model or inputs live on a GPU.

    >>> stats = measure_latency(torch.nn.Linear(8, 4), (torch.randn(1, 8),), iters=5)
    >>> sorted(stats)
    ['iters', 'latency_ms_median', 'latency_ms_p90']
    """
    if warmup < 0 or iters < 1 or max_seconds <= 0:
        raise ValueError(
            f"need warmup >= 0, iters >= 1 and max_seconds > 0; got warmup={warmup}, iters={iters}, "
            f"max_seconds={max_seconds}"
        )
    inputs = _as_tuple(example_inputs)
    sync = torch.cuda.synchronize if _on_cuda(model, inputs) else (lambda: None)
    deadline = time.perf_counter() + max_seconds
    times_ms: list[float] = []
    with _eval_mode(model), torch.inference_mode():
        for _ in range(warmup):
            model(*inputs)
            if time.perf_counter() > deadline:
                break
        sync()
        for _ in range(iters):
            start = time.perf_counter()
            model(*inputs)
            sync()
            end = time.perf_counter()
            times_ms.append((end - start) * 1e3)
            if end > deadline:
                break
    if len(times_ms) < iters:
        logger.info("latency: stopped after %d of %d iterations (max_seconds=%s)", len(times_ms), iters,
                    max_seconds)
    return {
        "latency_ms_median": float(np.median(times_ms)),
        "latency_ms_p90": float(np.percentile(times_ms, 90)),
        "iters": len(times_ms),
    }


@dataclass
class PeakMemory:
    """Result of :func:`peak_memory`; ``bytes`` and ``absolute_bytes`` are filled when the block exits.

    ``bytes`` is the figure to report: the CUDA peak allocated, or the CPU peak-RSS growth (see
    :data:`MEMORY_KIND_NOTES`). ``absolute_bytes`` is the process-wide peak (CPU: peak RSS after the
    block; CUDA: the same as ``bytes``). Both stay ``None`` where the platform cannot measure.
    """

    kind: MemoryKind
    bytes: int | None = None
    absolute_bytes: int | None = None


def _peak_rss_bytes() -> int | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # bytes on macOS, KiB on Linux


@contextlib.contextmanager
def peak_memory(device: torch.device | str | None = None) -> Iterator[PeakMemory]:
    """Measure peak memory during a ``with`` block on ``device`` (default: CUDA if available, else CPU).

    On CUDA: ``reset_peak_memory_stats`` then ``max_memory_allocated`` (kind ``"cuda_allocated"``).
    On CPU: growth of the process peak RSS (kind ``"cpu_rss_delta"``), a high-water-mark delta that
    underestimates when the process peaked earlier; measure in a fresh process for clean figures.

    >>> with peak_memory("cpu") as mem:
    ...     x = torch.ones(1024, 1024)
    >>> mem.kind, mem.bytes >= 0
    ('cpu_rss_delta', True)
    """
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        result = PeakMemory(kind="cuda_allocated")
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        try:
            yield result
        finally:
            torch.cuda.synchronize(dev)
            result.bytes = result.absolute_bytes = int(torch.cuda.max_memory_allocated(dev))
        return
    if dev.type != "cpu":
        raise ValueError(f"peak_memory supports 'cpu' and 'cuda' devices, got {str(dev)!r}")
    result = PeakMemory(kind="cpu_rss_delta")
    before = _peak_rss_bytes()
    if before is None:
        logger.warning("peak_memory: no resource module on this platform; CPU memory is not measured")
    try:
        yield result
    finally:
        after = _peak_rss_bytes()
        if before is not None and after is not None:
            result.bytes, result.absolute_bytes = after - before, after


def _cpu_model() -> str:
    for line in cpu_info().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _total_ram_bytes() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    with contextlib.suppress(AttributeError, ValueError, OSError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return None


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def environment_info() -> dict[str, Any]:
    """Hardware and software description for a benchmark report (no hostname, no user names).

    >>> info = environment_info()
    >>> {"python", "torch", "cpu_model", "cuda_available"} <= set(info)
    True
    """
    info: dict[str, Any] = {
        "timestamp_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "bigmodels": _package_version("bigmodels"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "ram_bytes": _total_ram_bytes(),
        "cuda_available": torch.cuda.is_available(),
    }
    if info["cuda_available"]:
        devices = []
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            devices.append({
                "name": props.name,
                "capability": f"{props.major}.{props.minor}",
                "memory_bytes": int(props.total_memory),
            })
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        info.update(cuda_version=torch.version.cuda, cudnn_version=cudnn,
                    cuda_device_count=len(devices), cuda_devices=devices)
    return info
