"""Quantization of Linear layers as an in-place transform driven by a config: ``quantize_(model, config)``.

The style of torchao's ``quantize_`` (and torchao does the work): a config says what to quantize and how, the
call swaps each matching ``nn.Linear``'s weight for a quantized tensor and returns a :class:`QuantReport` of
what it did. Any registered model works through the contract; nothing here knows a family.

- :class:`Int8DynamicConfig` (CPU and GPU): int8 weights, activations quantized to int8 per token at run time,
  int8 x int8 matrix products (torchao ``Int8DynamicActivationInt8WeightConfig``). The CPU choice: measured ~1.8x
  over fp32 on a stack of Linear layers on 2 CPU threads. ``kernel="fbgemm"`` swaps each layer for an
  :class:`Int8DynamicLinear` on PyTorch's own x86 int8 GEMM instead, which is what decoding wants: at 1-32 rows
  (one token per sequence) torchao's CPU path is slower than fp32, fbgemm's is 3-9x faster (see
  ``benchmarks/cpu_decode.md``). ``output_layer=True`` quantizes a tied output layer too, as an int8 copy.
- :class:`Int8WeightOnlyConfig`, :class:`Int4WeightOnlyConfig`, :class:`Float8DynamicConfig`: GPU only (their
  fast kernels are CUDA kernels; int8 weight-only measured *slower* than fp32 on the CPU), refused on a CPU model.

The recipe (method, options and the exact layers quantized) goes into ``model.info.meta["compress"]``, so
``bigmodels.save`` writes the quantized tensors themselves (int8 data + scales, through torchao's safetensors
flattening: the file is ~4x smaller than fp32) with the recipe in ``config.json``, and ``bigmodels.load``
rebuilds the float model, re-applies the recipe to get the same tensor layout, and loads the saved tensors.

>>> import bigmodels
>>> from bigmodels.testing import tiny_model
>>> model = tiny_model("bert-base")
>>> report = quantize_(model, Int8DynamicConfig())  # doctest: +SKIP
>>> report.quantized[:2]  # doctest: +SKIP
['encoder.layers.0.attn.q_proj', 'encoder.layers.0.attn.k_proj']
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import json
import logging
import re
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from .._files import cpu_info
from ..errors import CheckpointError, ConfigError
from ..models._contract import ModelInfo, model_device
from ..nn import kernels

__all__ = [
    "QuantConfig", "Int8DynamicConfig", "Int8DynamicLinear", "INT8_KERNELS", "Int8WeightOnlyConfig",
    "Int4WeightOnlyConfig", "Float8DynamicConfig",
    "QUANT_METHODS", "QuantReport", "quantize_", "is_quantized", "quant_config", "int8_kernel_for",
]

log = logging.getLogger(__name__)

_EXTRA = 'pip install "bigmodels[compress]"'


def _torchao():
    """torchao, imported on first use (its import logs a warning per CUDA-only extension it cannot load on a
    CPU machine: those are silenced here, they say nothing about the CPU path)."""
    logger = logging.getLogger("torchao")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import torchao.quantization as quantization
    except ImportError:
        raise ConfigError(f"quantization needs torchao: {_EXTRA}") from None
    finally:
        logger.setLevel(level)
    return quantization


# ---------------------------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class QuantConfig:
    """What to quantize: the ``nn.Linear`` layers whose names match a ``filter`` pattern (fnmatch, e.g.
    ``"encoder.*"``; None: every Linear) and none of the ``skip`` patterns. A Linear whose weight is shared with
    another module (a tied output layer) is always left as is: quantizing it would unshare, and double, it."""

    filter: tuple[str, ...] | None = None
    skip: tuple[str, ...] = ()
    method: ClassVar[str] = ""
    cuda_only: ClassVar[bool] = False

    def __post_init__(self) -> None:
        for name in ("filter", "skip"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, (value,))
            elif value is not None:
                object.__setattr__(self, name, tuple(value))
            value = getattr(self, name)
            if value is not None and not all(isinstance(p, str) and p for p in value):
                raise ConfigError(f"{type(self).__name__}.{name}={value!r}: give module-name patterns as non-empty "
                                  "strings, e.g. ('encoder.*',)")

    def torchao_config(self) -> Any:  # pragma: no cover (each config defines it)
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        """The JSON form of the options (saved with the model)."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}


INT8_KERNELS = ("torchao", "fbgemm")


@dataclass(frozen=True)
class Int8DynamicConfig(QuantConfig):
    """int8 weights (per output channel) and int8 activations (computed at run time): CPU and GPU.

    ``kernel``: ``"torchao"`` (torchao int8 tensors, activations scaled per token; CPU and GPU) or ``"fbgemm"``
    (:class:`Int8DynamicLinear`, PyTorch's x86 int8 GEMM, activations scaled per call; CPU only, the fast one for
    decoding). ``output_layer=True`` also quantizes a Linear whose weight is tied to another module (GPT's
    ``lm_head``, tied to the token embedding ``wte``) as an int8 copy of its own; the embedding lookup stays float.
    In an int8 decoding step that output layer is otherwise the biggest matrix product left in fp32.

    >>> Int8DynamicConfig(kernel="fbgemm", output_layer=True).options()
    {'filter': None, 'skip': [], 'output_layer': True, 'kernel': 'fbgemm'}
    """

    output_layer: bool = False
    kernel: str = "torchao"
    method: ClassVar[str] = "int8"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.output_layer, bool):
            raise ConfigError(f"Int8DynamicConfig.output_layer={self.output_layer!r} must be True or False")
        if self.kernel not in INT8_KERNELS:
            raise ConfigError(f"Int8DynamicConfig.kernel={self.kernel!r} is not valid; choose one of "
                              f"{', '.join(INT8_KERNELS)} (fbgemm: CPU decoding)")

    def torchao_config(self) -> Any:
        return _torchao().Int8DynamicActivationInt8WeightConfig()


def int8_kernel_for(model: nn.Module) -> str:
    """The int8 kernel to quantize ``model`` with where nobody chose: ``"fbgemm"`` (:class:`Int8DynamicLinear`) for
    a CPU model on an x86 PyTorch, else ``"torchao"``. On CPUs, torchao's int8 path was slower than fp32 here
    (all-MiniLM-L6-v2 as a classifier, 1 / 32 x 64 tokens, 2 threads of an Intel Xeon: 16.3 / 230 ms against
    fp32's 8.8 / 202, where fbgemm took 5.7 / 107; ``python benchmarks/cpu_micro.py int8_models``), as it was at
    decoding's few rows (``benchmarks/cpu_decode.md``).

    >>> int8_kernel_for(nn.Linear(4, 4)) in ("fbgemm", "torchao")
    True
    """
    cpu = model_device(model).type == "cpu"
    return "fbgemm" if cpu and "fbgemm" in torch.backends.quantized.supported_engines else "torchao"


@functools.cache
def _cpu_has_vnni() -> bool:
    """Whether this x86 CPU has VNNI (8-bit dot products summed in 32 bits); False where it cannot be read."""
    return bool(re.search(r"\b(avx512_vnni|avx_vnni)\b", cpu_info()))


@functools.cache
def _cpu_has_amx_int8() -> bool:
    """Whether this CPU has AMX int8 tiles (Intel Sapphire Rapids and later), which oneDNN's int8 GEMM uses and
    fbgemm's does not; False where it cannot be read or PyTorch was built without the oneDNN quantized engine."""
    return bool(re.search(r"\bamx_int8\b", cpu_info())) and "onednn" in torch.backends.quantized.supported_engines


_ENGINE_LOCK = threading.Lock()  # packing for oneDNN switches PyTorch's process-wide quantized engine for a moment


def _prepack(q: torch.Tensor, bias: torch.Tensor | None, engine: str) -> Any:
    """``quantized::linear_prepack`` for ``engine``; the packed object carries its kernel, whatever the engine
    setting is when it is called."""
    with _ENGINE_LOCK:
        before = torch.backends.quantized.engine
        torch.backends.quantized.engine = engine
        try:
            return torch.ops.quantized.linear_prepack(q, bias)
        finally:
            torch.backends.quantized.engine = before


class Int8DynamicLinear(nn.Module):
    """A Linear with int8 weights on PyTorch's x86 int8 GEMMs: y = dequant(q(x) W_q^T) + b, in int32.

    ``weight`` (out, in) int8 with ``weight_scale`` (out,): symmetric, per output channel. Each call quantizes
    its input to 8 bits with one scale for the call; on CPUs without VNNI to 7 bits (fbgemm's ``reduce_range``:
    their 16-bit intermediate sums could overflow at 8). 8 bits where VNNI is there: on all-MiniLM-L6-v2 the
    sentence vectors' min cosine to fp32 went from 0.960 (7 bits) to 0.989 (``benchmarks/cpu_encoders.md``).
    Where ``bigmodels_cpu::int8_linear`` is built (CPUs with AVX-512 VNNI and a C++ compiler:
    :mod:`bigmodels.nn.kernels`), calls run on it: every call on CPUs with AMX int8 tiles, up to
    ``kernel_max_rows_without_amx`` rows on others. It quantizes each row to 8 bits with its own scale and zero
    point, multiplies with VNNI at one row and AMX tiles above where the CPU has them, and traces under
    ``torch.compile``. The other calls run on PyTorch's ``quantized::linear_dynamic``: oneDNN's from
    ``onednn_min_rows`` rows (32) on CPUs with AMX, which it uses, fbgemm's below and elsewhere (at 768 x 3072 on 2
    threads of an AMX Xeon: oneDNN 0.33 vs fbgemm 0.64 ms at 128 rows, 18.5 vs 31.5 ms at 4,096; fbgemm 0.03 vs
    0.05 ms at one row; ``benchmarks/cpu_micro.py int8``), each packing made by the first call that runs on it
    (:meth:`engine_packed`). So a layer whose calls all run on the kernel holds two copies of its int8 matrix (the
    buffer and the kernel's tiles), not four: GPT-2 124M int8 after ``prepare_for_cpu_decoding`` had 478 MB
    allocated against 868 MB with both engines packed up front (``benchmarks/cpu_micro.py int8_memory``). CPU only;
    built by ``quantize_(model, Int8DynamicConfig(kernel="fbgemm"))``.

    >>> layer = Int8DynamicLinear.from_linear(nn.Linear(64, 32))
    >>> layer(torch.randn(2, 5, 64)).shape, layer.weight.dtype
    (torch.Size([2, 5, 32]), torch.int8)
    """

    # calls of at most this many rows run on bigmodels_cpu::int8_linear where it is built (None: every call). With AMX
    # tiles, every call: GPT-2's 48 block products on 2 threads of an AMX Xeon (scratch A/B, alternating) 1.35-1.8x
    # oneDNN at 8-128 rows, 0.84x at 1,024, 0.98x at 4,096; but whole forwards with every call on it against calls
    # over 256 rows on oneDNN (python benchmarks/cpu_micro.py int8_rows) 1.42x / 0.92x all-MiniLM at 64 x 24 / 32 x
    # 128 tokens, 1.13x / 1.02x BERT-base, and each row's own scale keeps the outputs closer to fp32 (least cosine of
    # all-MiniLM's vectors 0.99929 against 0.99577; STS-B Spearman drop 0.00116 against 0.00291). Its VNNI loop
    # alone, what CPUs without AMX run: 1.3-1.9x fbgemm at 1-16 rows, 1.2x at 32, not measured above
    # (``python benchmarks/cpu_micro.py int8_gemv``), hence the limit there
    kernel_max_rows: ClassVar[int | None] = None
    kernel_max_rows_without_amx: ClassVar[int | None] = 32
    onednn_min_rows: ClassVar[int] = 32  # where oneDNN (AMX) overtakes fbgemm: between 16 and 32 rows, measured

    def __init__(self, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight)  # (out, in) int8
        self.register_buffer("weight_scale", weight_scale)  # (out,) float32
        self.register_buffer("bias", bias)  # (out,) or None
        self._pack()

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8DynamicLinear:
        w = linear.weight.detach().float()  # (out, in)
        scale = (w.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)  # (out,)
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        return cls(q, scale, bias)

    def _pack(self) -> None:
        if self.weight.device.type != "cpu":
            raise ConfigError(f"Int8DynamicLinear runs on the CPU only (fbgemm) and was moved to "
                              f"{self.weight.device}; quantize with Int8DynamicConfig(kernel='torchao') on a GPU")
        # fbgemm's and oneDNN's packings are made by the first call that runs on them (engine_packed): a layer whose
        # calls all fit bigmodels_cpu::int8_linear (decoding on a CPU with AMX) never holds them
        self._packed = self._packed_onednn = None
        self._amx = _cpu_has_amx_int8()
        self._vnni = None  # (tiled matrix, row sums) for bigmodels_cpu::int8_linear, where it is built
        self._kernel_rows = self.kernel_rows()
        if self.in_features <= kernels.MAX_IN_FEATURES and kernels.available():
            self._vnni = kernels.pack_int8(self.weight)

    def engine_packed(self, onednn: bool = False) -> Any:
        """The int8 weight packed for PyTorch's ``quantized::linear_dynamic``: for oneDNN (AMX CPUs, large calls) or
        for fbgemm (qnnpack on ARM builds); packed on the first call that needs it and kept."""
        if onednn:
            if self._packed_onednn is None:
                self._packed_onednn = self.packed_for("onednn")
            return self._packed_onednn
        if self._packed is None:
            engines = torch.backends.quantized.supported_engines  # fbgemm on x86; ARM builds have qnnpack
            self._packed = self.packed_for("fbgemm" if "fbgemm" in engines else torch.backends.quantized.engine)
        return self._packed

    @classmethod
    def kernel_rows(cls) -> int | None:
        """The most rows a call may have to run on ``bigmodels_cpu::int8_linear`` on this CPU, None for no limit
        (read when packed)."""
        return cls.kernel_max_rows if _cpu_has_amx_int8() else cls.kernel_max_rows_without_amx

    def packed_for(self, engine: str) -> Any:
        """This layer's int8 weight and bias packed for ``engine``'s GEMM (``fbgemm``, ``onednn``, ...): what
        ``quantized::linear_dynamic`` takes. The one place that builds the qint8 tensor the packing op reads."""
        zeros = torch.zeros(self.out_features, dtype=torch.long)
        with warnings.catch_warnings():  # a qint8 tensor is the packing op's input format, built and dropped here
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions", category=UserWarning)
            q = torch._make_per_channel_quantized_tensor(self.weight, self.weight_scale.double(), zeros, 0)
        return _prepack(q, self.bias, engine)

    def _apply(self, fn, recurse=True):
        module = super()._apply(fn, recurse)
        self._pack()  # the buffers may be new tensors (.to(), .float()): pack what the module now holds
        return module

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._pack()

    def __getstate__(self) -> dict[str, Any]:  # copy.deepcopy / pickle: the packed matrix is rebuilt
        return {k: v for k, v in self.__dict__.items() if k not in ("_packed", "_packed_onednn", "_vnni")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pack()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        if self._vnni is not None and (self._kernel_rows is None or rows.shape[0] <= self._kernel_rows):
            y = torch.ops.bigmodels_cpu.int8_linear(rows, *self._vnni, self.weight_scale, self.bias, self.in_features)
        elif self._amx and rows.shape[0] >= self.onednn_min_rows:
            y = torch.ops.quantized.linear_dynamic(rows, self.engine_packed(onednn=True), False)  # AMX: 8 bits
        else:
            y = torch.ops.quantized.linear_dynamic(rows, self.engine_packed(), not _cpu_has_vnni())
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)  # (..., out)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


@dataclass(frozen=True)
class Int8WeightOnlyConfig(QuantConfig):
    """int8 weights, activations in their float type (GPU: memory-bound decoding)."""

    method: ClassVar[str] = "int8_weight_only"
    cuda_only: ClassVar[bool] = True

    def torchao_config(self) -> Any:
        return _torchao().Int8WeightOnlyConfig()


@dataclass(frozen=True)
class Int4WeightOnlyConfig(QuantConfig):
    """int4 weights in groups of ``group_size`` input features (GPU, bfloat16 models)."""

    group_size: int = 128
    method: ClassVar[str] = "int4_weight_only"
    cuda_only: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.group_size not in (32, 64, 128, 256):
            raise ConfigError(f"Int4WeightOnlyConfig.group_size={self.group_size!r} must be 32, 64, 128 or 256")

    def torchao_config(self) -> Any:
        return _torchao().Int4WeightOnlyConfig(group_size=self.group_size)


@dataclass(frozen=True)
class Float8DynamicConfig(QuantConfig):
    """float8 (e4m3) weights and activations, scaled per row (GPU with float8 tensor cores: H100 and later)."""

    method: ClassVar[str] = "float8"
    cuda_only: ClassVar[bool] = True

    def torchao_config(self) -> Any:
        q = _torchao()
        return q.Float8DynamicActivationFloat8WeightConfig(granularity=q.PerRow())


QUANT_METHODS: dict[str, type[QuantConfig]] = {
    c.method: c for c in (Int8DynamicConfig, Int8WeightOnlyConfig, Int4WeightOnlyConfig, Float8DynamicConfig)
}


def quant_config(method: str, **options: Any) -> QuantConfig:
    """The config of quantization ``method`` (a key of :data:`QUANT_METHODS`) with ``options``.

    >>> quant_config("int8", filter=["encoder.*"]).filter
    ('encoder.*',)
    """
    if method not in QUANT_METHODS:
        raise ConfigError(f"quantization method {method!r} is not known; choose one of {', '.join(QUANT_METHODS)}")
    cls = QUANT_METHODS[method]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"{cls.__name__} has no option {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    return cls(**options)


# ---------------------------------------------------------------------------------------------- the transform


@dataclass
class QuantReport:
    """What :func:`quantize_` did: the layers quantized, and those it left (name -> why)."""

    method: str
    quantized: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    float_bytes: int = 0  # of the quantized layers' weights before
    quantized_bytes: int = 0  # ... and after (data + scales)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        lines = [f"{self.method}: {len(self.quantized)} Linear layers quantized, weights "
                 f"{self.float_bytes / 1e6:.2f} MB -> {self.quantized_bytes / 1e6:.2f} MB"]
        lines += [f"  left as is: {name} ({why})" for name, why in self.skipped.items()]
        return "\n".join(lines)


def is_quantized(t: torch.Tensor) -> bool:
    """A torchao quantized tensor (a tensor subclass), not a plain one."""
    return isinstance(t, torch.Tensor) and type(t) not in (torch.Tensor, nn.Parameter)


def _tensor_bytes(t: torch.Tensor) -> int:
    if not is_quantized(t):
        return t.numel() * t.element_size()
    names = list(getattr(t, "tensor_data_names", ())) + list(getattr(t, "optional_tensor_data_names", ()))
    return sum(_tensor_bytes(x) for n in names if isinstance(x := getattr(t, n, None), torch.Tensor))


def _shared_weights(model: nn.Module) -> set[int]:
    """ids of the weights held by more than one module (tied embeddings and output layers)."""
    owners: dict[int, int] = {}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    return {k for k, n in owners.items() if n > 1}


def _targets(model: nn.Module, config: QuantConfig) -> tuple[list[str], dict[str, str]]:
    shared = _shared_weights(model)
    chosen, skipped = [], {}
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Linear, Int8DynamicLinear)):
            continue
        if config.filter is not None and not any(fnmatch.fnmatchcase(name, p) for p in config.filter):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in config.skip):
            skipped[name] = "matches skip"
        elif isinstance(m, Int8DynamicLinear) or is_quantized(m.weight):
            skipped[name] = "already quantized"
        elif id(m.weight) in shared and not getattr(config, "output_layer", False):
            skipped[name] = "weight tied to another module (Int8DynamicConfig(output_layer=True) quantizes a copy)"
        elif not m.weight.is_floating_point():
            skipped[name] = f"weight is {m.weight.dtype}"
        else:
            chosen.append(name)
    return chosen, skipped


def quantize_(model: nn.Module, config: QuantConfig, *, modules: list[str] | None = None) -> QuantReport:
    """Quantize the ``nn.Linear`` layers of ``model`` that ``config`` selects, in place; returns the report.

    ``modules`` (what ``load`` passes): quantize exactly these layers, whatever the filter. A model with no
    layer to quantize, or a GPU-only config on a CPU model, is a :class:`ConfigError` naming the fix. A model
    with a :class:`ModelInfo` records the recipe in ``info.meta["compress"]["quantization"]``.

    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    >>> quantize_(model, Int8DynamicConfig()).quantized
    ['0', '2']
    """
    if not isinstance(config, QuantConfig):
        raise ConfigError(f"quantize_ takes a QuantConfig (e.g. Int8DynamicConfig()), got {type(config).__name__}")
    device = model_device(model)
    if config.cuda_only and device.type != "cuda":
        raise ConfigError(f"{config.method} quantization ({type(config).__name__}) runs on CUDA GPUs only (its fast "
                          f"kernels are CUDA kernels) and this model is on {device.type}: move it with model.cuda() "
                          "first, or use Int8DynamicConfig (method int8), the CPU choice")
    fbgemm = getattr(config, "kernel", "torchao") == "fbgemm"
    if fbgemm and device.type != "cpu":
        raise ConfigError(f"Int8DynamicConfig(kernel='fbgemm') runs on the CPU and this model is on {device.type}: "
                          "use kernel='torchao' there, or move the model with model.cpu()")
    if fbgemm and "fbgemm" not in torch.backends.quantized.supported_engines:
        raise ConfigError("Int8DynamicConfig(kernel='fbgemm') needs PyTorch's x86 int8 kernels, which this build "
                          f"lacks (engines: {torch.backends.quantized.supported_engines}); use kernel='torchao'")
    if modules is None:
        chosen, skipped = _targets(model, config)
    else:
        chosen, skipped = list(modules), {}
    if not chosen:
        linears = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, Int8DynamicLinear))]
        if linears and config.filter:
            what = (f"no nn.Linear layer matches filter={list(config.filter)!r} (its Linear layers: "
                    f"{', '.join(linears[:6])}{', ...' if len(linears) > 6 else ''})")
        elif linears:
            why = "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:3])
            what = f"none of its {len(linears)} nn.Linear layers can be quantized ({why})"
        else:
            what = "it has no nn.Linear layer (quantization acts on Linear layers)"
        raise ConfigError(f"nothing to quantize in {type(model).__name__}: {what}; widen or drop the filter, or, "
                          "for a convolutional net, shrink it with structured pruning (bigmodels compress "
                          "--method structured)")
    names = set(chosen)
    modules_by_name = dict(model.named_modules())
    missing = sorted(names - set(modules_by_name))
    if missing:
        raise CheckpointError(f"the quantization recipe names layers the model does not have: {missing[:5]}; "
                              "the checkpoint belongs to another model")
    report = QuantReport(config.method, sorted(chosen, key=list(modules_by_name).index), skipped)
    report.float_bytes = sum(_tensor_bytes(modules_by_name[n].weight) for n in chosen)
    if fbgemm:
        if "" in names:
            raise ConfigError("Int8DynamicConfig(kernel='fbgemm') swaps Linear layers inside a model, and this model "
                              "is itself one: wrap it, e.g. nn.Sequential(layer)")
        for n in chosen:
            parent, _, child = n.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child,
                    Int8DynamicLinear.from_linear(modules_by_name[n]))
    else:
        _torchao().quantize_(model, config.torchao_config(),
                             filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and fqn in names)
    report.quantized_bytes = sum(_tensor_bytes(model.get_submodule(n).weight)
                                 + _tensor_bytes(getattr(model.get_submodule(n), "weight_scale", torch.empty(0)))
                                 for n in chosen)
    info = getattr(model, "info", None)
    if isinstance(info, ModelInfo):
        record = info.meta.setdefault("compress", {})
        record["quantization"] = {"method": config.method, "options": config.options(),
                                  "modules": report.quantized}
    log.info("%s", report)
    return report


# ---------------------------------------------------------------------------------------------- files
# bigmodels.save / load call these for a model whose meta carries a "compress" record (a quantized or a
# structurally pruned model): see bigmodels/io.py.


def save_compressed_weights(model: nn.Module, path: Path) -> None:
    """Write ``model``'s tensors to ``path`` (safetensors): quantized tensors flattened into their plain parts
    (int8 data, scales) with their layout in the file's metadata (torchao's safetensors support)."""
    from safetensors.torch import save_file

    state = model.state_dict()
    if not any(is_quantized(t) for t in state.values()):
        from safetensors.torch import save_model

        save_model(model, str(path), metadata={"format": "pt"})  # de-duplicates tied weights
        return
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

    plain: dict[str, torch.Tensor] = {}
    seen: dict[tuple[int, int], str] = {}  # tied plain tensors are written once
    for k, t in state.items():
        if is_quantized(t):
            plain[k] = t
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key in seen and t.numel():
            continue
        seen[key] = k
        plain[k] = t.detach().contiguous()
    data, metadata = flatten_tensor_state_dict(plain)
    save_file(data, str(path), metadata={**metadata, "format": "pt"})


def load_compressed_weights(model: nn.Module, path: Path, record: dict[str, Any],
                            device: str | torch.device = "cpu") -> nn.Module:
    """Load a model saved with a ``compress`` record: give it the pruned shapes, re-apply the quantization
    recipe (the same tensor layout), then read the tensors of ``path``. Returns the model."""
    from safetensors import safe_open

    from .prune import restore_structure

    if record.get("structure"):
        restore_structure(model, record["structure"])
    recipe = record.get("quantization")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    except Exception as e:  # noqa: BLE001 (safetensors raises its own error types and OSError)
        raise CheckpointError(f"{path} is unreadable or truncated ({e}); re-save the model") from None
    if recipe:
        model.to(device)
        config = quant_config(recipe["method"], **recipe.get("options", {}))
        quantize_(model, config, modules=recipe["modules"])
        if "tensor_names" in metadata:
            from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict

            tensors, _ = unflatten_tensor_state_dict(tensors, metadata)
    own = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} in the file, {tuple(own[k].shape)} in the model" for k, v in tensors.items()
             if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise CheckpointError(f"{path} does not match its compressed model: {'; '.join(wrong[:3])}; the recipe in "
                              "config.json was edited or belongs to other weights")
    # quantized tensors replace the layout quantize_ built (assign); plain ones are copied in place, which keeps
    # tied weights tied (each is written once, so the other name of a tied pair is not in the file)
    quantized = {k: v for k, v in tensors.items() if is_quantized(v)}
    result = model.load_state_dict({k: v for k, v in tensors.items() if k not in quantized}, strict=False)
    if quantized:
        model.load_state_dict(quantized, strict=False, assign=True)
    missing = [k for k in result.missing_keys if k not in quantized and not _tied(model, k)]
    unexpected = result.unexpected_keys
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match its compressed model: missing {sorted(missing)[:5]}, "
                              f"unexpected {sorted(unexpected)[:5]}")
    return model.to(device)


def _tied(model: nn.Module, key: str) -> bool:
    module_name, _, name = key.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    return id(getattr(module, name, None)) in _shared_weights(model)


def recipe_json(model: nn.Module) -> str:
    """The compression record of ``model`` as JSON (empty object when it has none)."""
    info = getattr(model, "info", None)
    return json.dumps(info.meta.get("compress", {}) if isinstance(info, ModelInfo) else {}, indent=2)
