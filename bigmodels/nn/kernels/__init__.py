"""CPU operators PyTorch lacks or runs slowly at decoding's sizes, built on first use with the machine's C++
compiler (``cpu.cpp``), registered as ``torch.ops.bigmodels_cpu.*`` with shape functions, so ``torch.compile``
traces through them:

- ``int8_linear``: int8 x int8 products, each row quantized to 8 bits with its own scale and zero point, the int8
  matrix read once front to back (:func:`pack_int8` lays it out): AVX-512 VNNI at one row, AMX int8 tiles from 2
  rows (in blocks of 16) where the CPU has them and the compiler knows them. On GPT-2 124M's 49 matrices on 2
  threads of an AMX Xeon: 1.4x fbgemm's ``quantized::linear_dynamic`` at one row, 2.4x at 8, 2.9x at 16 (``python
  benchmarks/cpu_micro.py int8_gemv``). :class:`~bigmodels.compress.quantize.Int8DynamicLinear` runs every call on
  it where the CPU has AMX, calls of up to 32 rows (its VNNI loop alone) elsewhere.
- ``linear_f32``: a float32 product of a few rows (up to 4) with a column-major weight, each thread streaming a
  contiguous band of the weight's transpose with prefetches ahead: one row of fp32 is bound by memory; GPT-2 124M's
  49 step products 0.98-1.14x ``F.linear`` on the same weights and 1.10-1.18x oneDNN's packed weights at one row,
  1.12-1.14x oneDNN at four (``python benchmarks/cpu_micro.py f32_gemv``), and none of addmm's bias broadcast and
  copies in a compiled step. :class:`~bigmodels.compress.layout.PackedLinear` runs its few-row calls on it.
- ``one_query_attention``: a decoding step's attention (one query per batch row and head) in one pass over the
  keys and one over the values (:func:`~bigmodels.nn.scaled_dot_product_attention` takes it for one float32
  query on the CPU without gradients).
- ``argmax``: a row's largest value, vectorized (``torch.argmax`` reads a 50,257-wide row one value at a time):
  greedy decoding's pick.
- ``screened_argmax``: greedy decoding's pick straight from the final hidden states, exact, reading the output
  layer as float16: the float16 product bounds every logit (:func:`screen` makes the copy and the bounds), and
  the few rows whose bound reaches the best are summed again from the float32 weight.

The build runs once per source, PyTorch version and compiler, into ``$BIGMODELS_KERNEL_DIR`` (default
``~/.cache/bigmodels/kernels``), written under a temporary name and renamed, so concurrent processes and an
interrupted build never leave a broken library. Where it cannot be used (a CPU without AVX-512 VNNI, no C++
compiler, a failed build, or ``BIGMODELS_KERNELS=0``), :func:`available` says False, once with the reason in the
log, and the callers run PyTorch's own kernels: nothing fails for want of a compiler.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sysconfig
import tempfile
import threading
from pathlib import Path

import torch

log = logging.getLogger(__name__)

DISABLE_ENV = "BIGMODELS_KERNELS"  # "0": never build or load, run PyTorch's kernels
DIR_ENV = "BIGMODELS_KERNEL_DIR"
TILE = 64  # output rows per packed tile (cpu.cpp's kTile)
MAX_IN_FEATURES = 65536  # 255 * 127 * K must fit int32's sums
_SOURCE = Path(__file__).with_name("cpu.cpp")
_FLAGS = ("-O3", "-std=c++17", "-fPIC", "-shared", "-fopenmp", "-mavx512f", "-mavx512bw", "-mavx512vl",
          "-mavx512dq", "-mavx512vnni")
_AMX_FLAGS = ("-mamx-tile", "-mamx-int8")  # where the compiler knows them (GCC 11+, clang 12+); else built without
_state: bool | None = None  # None: not tried yet
_LOCK = threading.Lock()


def kernel_dir() -> Path:
    return Path(os.environ.get(DIR_ENV) or Path.home() / ".cache" / "bigmodels" / "kernels")


def available() -> bool:
    """Whether ``torch.ops.bigmodels_cpu`` is there to call (built and loaded on the first call if need be);
    where it is not, the reason is logged once. Inside ``torch.compile``'s tracing only what is known is said."""
    global _state
    if _state is None and not torch.compiler.is_compiling():
        with _LOCK:  # one build and one registration, whichever thread asks first
            if _state is None:
                reason = _load()
                if reason is not None:
                    log.info("CPU kernels of bigmodels not used (PyTorch's run instead): %s", reason)
                _state = reason is None
    return bool(_state)


def usable() -> bool:
    """Whether a ``bigmodels_cpu`` operator may be called here: built (:func:`available`) and not being traced for
    export (an exported graph holds standard operators only, which ONNX and other runtimes know)."""
    return not torch.compiler.is_exporting() and available()


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_has_avx512_vnni() -> bool:
    from ..._files import cpu_info

    flags = cpu_info()
    return all(re.search(rf"\b{f}\b", flags) for f in ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"))


def _load() -> str | None:
    """Build and load the library -> None, or why it cannot be used."""
    if os.environ.get(DISABLE_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return f"{DISABLE_ENV}=0"
    if not _cpu_has_avx512_vnni():
        return "this CPU has no AVX-512 VNNI"
    cxx = _compiler()
    if cxx is None:
        return "no C++ compiler (c++, g++ or clang++ on PATH, or $CXX)"
    if not hasattr(torch.ops.bigmodels_cpu, "int8_linear"):  # not loaded by an earlier call in this process
        try:
            torch.ops.load_library(str(_build(cxx)))
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            return f"building or loading {_SOURCE.name} failed: {e}"
        _register_shapes()
    return None


def _build(cxx: str) -> Path:
    """The shared library of ``cpu.cpp``, compiled unless a build of this source, PyTorch and compiler is there;
    with AMX tiles where the compiler takes their flags."""
    from torch.utils import cpp_extension

    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    key = hashlib.sha256("\0".join([_SOURCE.read_text(), torch.__version__, version, abi, *_FLAGS]).encode())
    out = kernel_dir() / f"bigmodels_cpu_{key.hexdigest()[:16]}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    includes = [f"-I{p}" for p in [*cpp_extension.include_paths(), sysconfig.get_paths()["include"]]]
    libs = [f"-L{p}" for p in cpp_extension.library_paths()] + ["-lc10", "-ltorch_cpu"]
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        for extra in (_AMX_FLAGS, ()):
            cmd = [cxx, *_FLAGS, *extra, abi, *includes, str(_SOURCE), "-o", tmp, *libs]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if done.returncode == 0:
                break
        else:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-4000:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _register_shapes() -> None:
    """What ``torch.compile`` traces each operator with: its output's shape and type."""
    @torch.library.register_fake("bigmodels_cpu::int8_linear")
    def _(x, packed, row_sums, scale, bias, in_features):
        return x.new_empty(x.shape[0], scale.shape[0])

    @torch.library.register_fake("bigmodels_cpu::one_query_attention")
    def _(q, k, v, mask, scale):
        return q.new_empty(q.shape)

    @torch.library.register_fake("bigmodels_cpu::linear_f32")
    def _(x, wt, bias):
        return x.new_empty(x.shape[0], wt.shape[1])

    @torch.library.register_fake("bigmodels_cpu::argmax")
    def _(x):
        return x.new_empty(x.shape[0], 1, dtype=torch.long)

    @torch.library.register_fake("bigmodels_cpu::screened_argmax")
    def _(x, qt, slack, w, bias):
        return x.new_empty(x.shape[0], 1, dtype=torch.long)


_UNIT_ROUNDOFF = 2.0 ** -24  # float32's


def screen(weight: torch.Tensor, rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``bigmodels_cpu::screened_argmax`` reads for an output layer's float32 ``weight`` (V', K) (its first
    ``rows`` rows, default all): (qt, slack) = (the weight rounded to float16 and transposed, (K, V) contiguous,
    and each row's bound on how far a float32 sum of x . q_i can be from x . w_i, per unit of ||x||:
    ``||w_i - q_i|| + gamma_K ||q_i||`` with gamma_K = K u / (1 - K u), u float32's unit roundoff, computed in
    double and rounded up). Half the float32 weight's memory.

    >>> qt, slack = screen(torch.tensor([[1.0, 2.0], [0.1, 0.2], [5.0, 6.0]]), rows=2)
    >>> qt.dtype, tuple(qt.shape), bool((slack > 0).all()), bool((slack < 1e-4).all())
    (torch.float16, (2, 2), True, True)
    """
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"screen: weight must be a (rows, in) float matrix, got {tuple(weight.shape)} {weight.dtype}")
    V = weight.size(0) if rows is None else rows
    K = weight.size(1)
    gamma = K * _UNIT_ROUNDOFF / (1 - K * _UNIT_ROUNDOFF)
    qt = torch.empty(K, V, dtype=torch.float16)
    slack = torch.empty(V, dtype=torch.float64)
    with torch.no_grad():
        for i in range(0, V, 4096):  # a block of rows at a time: the double copies stay small
            w = weight[i:i + 4096][: V - i].detach().to(torch.float64)
            q = w.to(torch.float16)
            qt[:, i:i + q.size(0)] = q.t()
            q = q.to(torch.float64)
            slack[i:i + q.size(0)] = (w - q).norm(dim=1) + gamma * q.norm(dim=1)
    return qt, (slack * (1 + 1e-6)).to(torch.float32)  # the factor covers the rounding to float32 (2^-24)


def pack_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) int8 weights -> (the tiled matrix ``bigmodels_cpu::int8_linear`` reads, each output row's sum as
    int32 over its tiles' rows). Rows are padded with zeros to whole tiles of 64, inputs to a multiple of 64.

    >>> packed, sums = pack_int8(torch.ones(100, 10, dtype=torch.int8))
    >>> packed.shape, sums.shape, sums[:2].tolist(), sums[100:].abs().sum().item()
    (torch.Size([2, 16, 64, 4]), torch.Size([128]), [10, 10], 0)
    """
    n, k = weight.shape
    tiles, groups = -(-n // TILE), -(-k // 64) * 16  # inputs in whole 64-byte rows of AMX tiles
    padded = torch.zeros(tiles * TILE, groups * 4, dtype=torch.int8)
    padded[:n, :k] = weight
    packed = padded.view(tiles, TILE, groups, 4).permute(0, 2, 1, 3).contiguous()
    return packed, padded.sum(dim=1, dtype=torch.int32)
