"""Peak FLOP/s of a device and model FLOPs utilisation (MFU): what a measured throughput means.

>>> mfu(1e12, "cpu") is None  # no peak is known for a CPU
True
"""

from __future__ import annotations

import math
import re

import torch

from ..errors import ConfigError

__all__ = ["PEAK_FLOPS", "peak_flops", "mfu"]

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16, "float64": torch.float64}

# ------------------------------------------------------------------------------------------------ peak FLOP/s
# Dense peaks (no 2:4 sparsity) in FLOP/s, from NVIDIA's datasheets; their tensor-core figures are quoted with
# sparsity, so these are half of them. "fp32" is the CUDA cores' FP32 rate; with TF32 matmuls/convs enabled
# (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) ask for "tf32".
#   H100 SXM / PCIe / NVL: https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet
#   H200 / H200 NVL:       https://www.nvidia.com/en-us/data-center/h200/ (same Hopper rates as H100 SXM / NVL)
#   GH200:                 https://resources.nvidia.com/en-us-grace-cpu/grace-hopper-superchip (H100 SXM rates)
#   A100 (SXM and PCIe):   https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf
#   A10 (and AWS's A10G, which has no NVIDIA datasheet; AWS and Lightning use the A10's figures):
#                          https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a10/pdf/a10-datasheet.pdf
#   L4:                    https://resources.nvidia.com/en-us-data-center-overview/l4-gpu-datasheet
#   L40S:                  https://resources.nvidia.com/en-us-l40s/l40s-datasheet-28413
_HOPPER_SXM = {"fp32": 66.9e12, "tf32": 494.7e12, "bf16": 989e12, "fp16": 989e12, "fp8": 1979e12}
_HOPPER_NVL = {"fp32": 60e12, "tf32": 417.5e12, "bf16": 835.5e12, "fp16": 835.5e12, "fp8": 1670.5e12}
_A10 = {"fp32": 31.2e12, "tf32": 62.5e12, "bf16": 125e12, "fp16": 125e12}
PEAK_FLOPS: dict[str, dict[str, float]] = {  # a word (or words) of torch.cuda.get_device_name -> dtype -> FLOP/s
    "H100": _HOPPER_SXM,  # "NVIDIA H100 80GB HBM3"
    "H100 PCIe": {"fp32": 51e12, "tf32": 378e12, "bf16": 756e12, "fp16": 756e12, "fp8": 1513e12},
    "H100 NVL": _HOPPER_NVL,
    "H200": _HOPPER_SXM,
    "H200 NVL": _HOPPER_NVL,
    "GH200": _HOPPER_SXM,
    "A100": {"fp32": 19.5e12, "tf32": 156e12, "bf16": 312e12, "fp16": 312e12},
    "A10": _A10,
    "A10G": _A10,
    "L4": {"fp32": 30.3e12, "tf32": 60e12, "bf16": 121e12, "fp16": 121e12, "fp8": 242.5e12},
    "L40S": {"fp32": 91.6e12, "tf32": 183e12, "bf16": 362.05e12, "fp16": 362.05e12, "fp8": 733e12},
}

_DTYPE_KEYS = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
for _name in ("float8_e4m3fn", "float8_e5m2"):
    if hasattr(torch, _name):
        _DTYPE_KEYS[getattr(torch, _name)] = "fp8"
_KEY_NAMES = ("fp32", "tf32", "bf16", "fp16", "fp8")


def _device_table(name: str) -> dict[str, float] | None:
    """The entry whose key matches whole words of ``name`` (case-insensitive), the longest key first, so
    "NVIDIA H100 PCIe" is the PCIe card, "NVIDIA L40S" no L4 and "NVIDIA A100-SXM4-80GB" no A10."""
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):
        if re.search(rf"(?<![\w]){re.escape(key)}(?![\w])", name, flags=re.IGNORECASE):
            return PEAK_FLOPS[key]
    return None


def peak_flops(device: torch.device | str | None = None, dtype: torch.dtype | str = torch.bfloat16) -> float | None:
    """The dense peak FLOP/s of a CUDA ``device`` (default: the current one) for ``dtype`` (a torch dtype, its
    name, or one of "fp32", "tf32", "bf16", "fp16", "fp8"); None for a CPU, no GPU, or a GPU or dtype not in
    :data:`PEAK_FLOPS`. float32 means the CUDA cores' rate: ask for "tf32" when TF32 matmuls/convs are on.

    >>> peak_flops("cpu") is None
    True
    """
    if isinstance(dtype, str) and dtype in _DTYPES:  # "bfloat16", "half", ...
        dtype = _DTYPES[dtype]
    key = dtype if isinstance(dtype, str) else _DTYPE_KEYS.get(dtype)
    if key not in _KEY_NAMES:
        if isinstance(dtype, torch.dtype):
            return None  # a dtype no table lists (float64, int8): no peak to quote
        raise ConfigError(f"dtype={dtype!r} has no peak-FLOPs entry; use a torch dtype or one of {_KEY_NAMES}")
    if device is None:
        if not torch.cuda.is_available():
            return None
        device = torch.device("cuda", torch.cuda.current_device())
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"device={device!r} is not a torch device; use e.g. 'cuda', 'cuda:1' or 'cpu'") from e
    if device.type != "cuda":
        return None
    try:
        name = torch.cuda.get_device_name(device)
    except (RuntimeError, AssertionError):  # no CUDA build or no such GPU
        return None
    table = _device_table(name)
    return None if table is None else table.get(key)


def mfu(
    flops_per_second: float, device: torch.device | str | None = None, dtype: torch.dtype | str = torch.bfloat16,
) -> float | None:
    """Model FLOPs utilisation: the model's FLOPs per second over the device's dense peak (Chowdhery et al. 2022,
    "PaLM", appendix B), or None where :func:`peak_flops` knows no peak.

    >>> mfu(1e12, "cpu") is None
    True
    """
    if not math.isfinite(flops_per_second) or flops_per_second < 0:
        raise ConfigError(f"flops_per_second={flops_per_second!r} must be a finite number >= 0")
    peak = peak_flops(device, dtype)
    return None if peak is None else flops_per_second / peak
