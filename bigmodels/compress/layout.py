"""Memory layout of Linear weights for one-token decoding on the CPU: an explicit, reversible transform.

A decoding step multiplies one row per sequence by every weight matrix (a matrix-vector product), so it is
bound by how fast the weights stream from memory. ``nn.Linear`` keeps W as (out, in) row-major; the BLAS kernel
for ``x @ W^T`` at one row streams that layout measurably slower than W^T stored contiguously (in, out), which is
the layout Hugging Face's GPT-2 ``Conv1D`` keeps: on 2 CPU threads GPT-2 124M's 49 matrices went 1.2-1.5x
faster as (in, out) (``benchmarks/cpu_decode.md``). :func:`column_major_linears_` re-lays each weight so: the
same values and shape (out, in), column-major strides, the same ``Parameter`` objects (tied weights stay tied;
the embedding lookup of a tied output layer reads the same matrix). Results equal the row-major model's to
float rounding (the summation order of the kernel changes).

``state_dict()`` still gives contiguous (row-major) tensors, so ``bigmodels.save`` and the Hugging Face export
work unchanged and the files are the same. :func:`row_major_linears_` undoes it.

    >>> import bigmodels, torch
    >>> model = bigmodels.create_model("gpt_mini").eval()
    >>> column_major_linears_(model), model.lm_head.weight.is_contiguous(), model.lm_head.weight is model.wte.weight
    (17, False, True)
    >>> all(t.is_contiguous() for t in model.state_dict().values())
    True
    >>> row_major_linears_(model)
    17

:func:`prepack_linears_` goes further: each ``nn.Linear`` becomes a :class:`PackedLinear` that also keeps its weight
in oneDNN's packed (blocked) layout and multiplies with oneDNN's kernel, what inductor's freezing does for a compiled
graph, here in eager mode. Per matrix product of GPT-2 124M on this CPU it measured 1.5-1.7x faster than the
column-major weights at one row and 2.5-3.5x at eight rows, where MKL's sgemm was 6x slower per row than at one.
:func:`unpack_linears_` undoes it; :func:`prepare_for_cpu_decoding` applies the fastest measured setup, fp32 or int8.
"""

from __future__ import annotations

import ctypes
import logging
import platform
import sys
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ConfigError
from ..nn import kernels

__all__ = ["column_major_linears_", "row_major_linears_", "PackedLinear", "prepack_linears_", "unpack_linears_",
           "FusedActivation", "fuse_activations_", "retain_freed_memory", "prepare_for_cpu_decoding"]

log = logging.getLogger(__name__)


def _plain_weights(model: nn.Module) -> list[nn.Parameter]:
    """The distinct float weights of the plain ``nn.Linear`` layers (no parametrization, no quantized tensor)."""
    seen: dict[int, nn.Parameter] = {}
    for m in model.modules():
        if isinstance(m, nn.Linear) and not parametrize.is_parametrized(m):
            w = m.weight
            if type(w) is nn.Parameter and w.is_floating_point() and w.dim() == 2:
                seen.setdefault(id(w), w)
    return list(seen.values())


def _contiguous_state(module: nn.Module, state_dict, prefix: str, local_metadata) -> None:
    """State-dict post-hook: column-major tensors saved row-major; tied ones stay one tensor (one copy each)."""
    copies: dict[tuple[int, int], torch.Tensor] = {}
    for key, t in state_dict.items():
        if isinstance(t, torch.Tensor) and not t.is_contiguous() and t.dim() == 2 and t.t().is_contiguous():
            ptr = (t.untyped_storage().data_ptr(), t.storage_offset())
            state_dict[key] = copies.setdefault(ptr, t.contiguous())


def column_major_linears_(model: nn.Module) -> int:
    """Store every plain ``nn.Linear`` weight of ``model`` column-major (W^T contiguous), in place, for faster
    one-token (matrix-vector) steps on the CPU; returns how many weights were re-laid. See the module docstring.

    >>> layer = nn.Linear(8, 4)
    >>> column_major_linears_(layer), layer.weight.shape, layer.weight.stride()
    (1, torch.Size([4, 8]), (1, 4))
    """
    changed = 0
    with torch.no_grad():
        for w in _plain_weights(model):
            if w.is_contiguous():
                w.data = w.data.t().contiguous().t()  # (out, in) values, strides (1, out)
                changed += 1
    if changed and not getattr(model, "_column_major_hook", False):
        model.register_state_dict_post_hook(_contiguous_state)
        model._column_major_hook = True
    return changed


def row_major_linears_(model: nn.Module) -> int:
    """Undo :func:`column_major_linears_`: every plain ``nn.Linear`` weight back to row-major; returns how many."""
    changed = 0
    with torch.no_grad():
        for w in _plain_weights(model):
            if not w.is_contiguous():
                w.data = w.data.contiguous()
                changed += 1
    return changed


# ------------------------------------------------------------------------------------------------ oneDNN packing

_PACKABLE = (torch.float32, torch.bfloat16)  # dtypes oneDNN's packed linear takes on any x86 CPU


def _pack(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (out, in) reordered into oneDNN's blocked layout for its linear kernel (an opaque tensor)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach())  # batch_size=None: one layout for any rows


class PackedLinear(nn.Module):
    """An inference-only ``nn.Linear`` that multiplies with a copy of its weight packed for oneDNN.

    It holds the layer's own ``weight`` and ``bias`` Parameters (the same objects: tied weights stay tied, the
    state dict has the plain layer's keys and values) plus the packed copy, which ``state_dict`` never sees.
    The packed copy is rebuilt when the weight changes (in place, as ``load_state_dict`` or an optimizer does, or
    by a new ``.data``, dtype or device) and is dropped by ``copy.deepcopy`` and pickling, which rebuild it. Where
    it cannot serve (autograd needs a gradient through it: of the input, as attributions of a frozen model do, or
    of the weight; training mode, a non-CPU tensor, another dtype) the forward is plain ``F.linear``, so results
    are always the layer's; under ``torch.compile`` it is plain ``F.linear`` too (a compiled graph cannot call the
    packed kernel; :func:`prepare_for_cpu_decoding` lays the weight column-major for it). Calls of at most
    :attr:`kernel_max_rows` float32 rows with a column-major weight (a decoding step's, eager or compiled) run on
    ``bigmodels_cpu::linear_f32`` where :mod:`bigmodels.nn.kernels` is built, unless a gradient is wanted or the
    model is being exported. Built by :func:`prepack_linears_`.

    >>> layer = nn.Linear(16, 4).eval()
    >>> packed = PackedLinear(layer)
    >>> x = torch.randn(3, 16)
    >>> with torch.no_grad():
    ...     torch.allclose(packed(x), layer(x), atol=1e-6), packed.weight is layer.weight
    (True, True)
    """

    # calls of at most this many float32 rows with a column-major weight run on bigmodels_cpu::linear_f32 where it is
    # built (bigmodels.nn.kernels): GPT-2 124M's 49 step products on 2 threads of an AMX Xeon
    # (python benchmarks/cpu_micro.py f32_gemv, three runs): 0.98-1.14x addmm on the same weights and 1.10-1.18x
    # oneDNN's packed ones at one row, 1.02-1.15x / 1.12-1.14x oneDNN at two / four rows; the kernel takes at most 4.
    # The compiled batch-1 step also loses addmm's bias broadcast and copies: 1.06x the step (cpu_decode.md)
    kernel_max_rows = 4

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.training = linear.training
        self._packed: torch.Tensor | None = None
        self._packed_from: tuple = ()
        self.activation: str | None = None  # "gelu" / "gelu_tanh": applied to the output (fuse_activations_)

    def _key(self) -> tuple:
        w = self.weight
        return (w._version, w.data_ptr(), w.dtype, w.device)

    def packed_weight(self) -> torch.Tensor | None:
        """The oneDNN copy of the current weight (rebuilt if the weight changed); None where it cannot serve."""
        w = self.weight
        if w.device.type != "cpu" or w.dtype not in _PACKABLE:
            self._packed, self._packed_from = None, ()
            return None
        key = self._key()
        if self._packed is None or key != self._packed_from:
            self._packed, self._packed_from = _pack(w), key
        return self._packed

    def _wants_grad(self, x: torch.Tensor) -> bool:
        """Whether autograd wants a gradient through this call (of the input, the weight or the bias): neither
        packed kernel has a backward, so such a call runs on plain ``F.linear``."""
        b = self.bias
        return torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad
                                            or (b is not None and b.requires_grad))

    def _few_rows(self, x: torch.Tensor) -> bool:
        """Whether this call runs on ``bigmodels_cpu::linear_f32``: at most :attr:`kernel_max_rows` float32 rows on
        the CPU, the weight column-major (:func:`column_major_linears_`), no gradient, not traced for export."""
        w, b = self.weight, self.bias
        if not (x.dtype == w.dtype == torch.float32 and x.device.type == "cpu" and w.device.type == "cpu"
                and x.dim() >= 1 and x.size(-1) == self.in_features
                and 0 < x.numel() <= self.kernel_max_rows * self.in_features and w.stride(0) == 1
                and w.t().is_contiguous() and (b is None or b.dtype == torch.float32)):
            return False
        return not self._wants_grad(x) and kernels.usable()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        packed = None
        if not self.training and self._few_rows(x):  # a decoding step's rows: eager or compiled
            y = torch.ops.bigmodels_cpu.linear_f32(x.reshape(-1, self.in_features), w.t(), self.bias)
            y = y.view(*x.shape[:-1], self.out_features)
            return y if self.activation is None else F.gelu(y, approximate=_GELU[self.activation])
        # under torch.compile the plain product: dynamo cannot trace the packed copy's cache, and inductor cannot
        # lower oneDNN's packed kernel
        if not (self.training or x.dtype != w.dtype or self._wants_grad(x) or torch.compiler.is_compiling()):
            packed = self.packed_weight()
        if packed is None or x.device.type != "cpu":
            y = F.linear(x, w, self.bias)
            return y if self.activation is None else F.gelu(y, approximate=_GELU[self.activation])
        if self.activation is None:
            return torch.ops.mkldnn._linear_pointwise(x, packed, self.bias, "none", [], "")
        return torch.ops.mkldnn._linear_pointwise(x, packed, self.bias, "gelu", [], _GELU[self.activation])

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()  # the opaque oneDNN tensor has no storage to copy: rebuilt on first use
        state["_packed"], state["_packed_from"] = None, ()
        return state

    def extra_repr(self) -> str:
        act = f", activation={self.activation}" if self.activation else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}{act}"


_GELU = {"gelu": "none", "gelu_tanh": "tanh"}  # PackedLinear.activation -> GELU's approximation (F.gelu, oneDNN)


class FusedActivation(nn.Identity):
    """Where an activation module was before :func:`fuse_activations_` moved its work into the layer before it:
    passes its input on, and keeps the ``original`` module for :func:`unpack_linears_` to put back."""

    def __init__(self, original: nn.Module) -> None:
        super().__init__()
        self.original = original


def _check_cpu_inference(model: nn.Module, what: str) -> None:
    if model.training:
        raise ConfigError(f"{what} is for inference and {type(model).__name__} is in training mode; call "
                          "model.eval() first (unpack_linears_(model) before training it again)")
    devices = sorted({p.device.type for p in model.parameters()} - {"cpu"})
    if devices:
        raise ConfigError(f"{what} packs weights for oneDNN's CPU kernel and this model has parameters on "
                          f"{', '.join(devices)}; move it with model.cpu() first (on a GPU, decode as it is)")


def prepack_linears_(model: nn.Module) -> int:
    """Swap every plain float32 / bfloat16 ``nn.Linear`` of an eval-mode CPU ``model`` for a :class:`PackedLinear`
    (weights packed for oneDNN), in place; returns how many. Outputs equal the plain model's to float rounding;
    the packed copies add the Linear weights' memory once more. Undo with :func:`unpack_linears_`.

    >>> import bigmodels
    >>> model = bigmodels.create_model("gpt_mini").eval()
    >>> prepack_linears_(model), type(model.lm_head).__name__, model.lm_head.weight is model.wte.weight
    (17, 'PackedLinear', True)
    >>> unpack_linears_(model), type(model.lm_head).__name__
    (17, 'Linear')
    """
    _check_cpu_inference(model, "prepack_linears_")
    if not torch.backends.mkldnn.is_available():
        raise ConfigError("prepack_linears_ needs PyTorch's oneDNN (mkldnn) kernels, which this build lacks "
                          "(torch.backends.mkldnn.is_available() is False); use column_major_linears_(model)")
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if type(child) is nn.Linear and not parametrize.is_parametrized(child)
             and child.weight.dtype in _PACKABLE]
    for parent, name, child in swaps:
        packed = PackedLinear(child)
        packed.packed_weight()  # pack now, not on the first call
        setattr(parent, name, packed)
    return len(swaps)


def unpack_linears_(model: nn.Module) -> int:
    """Undo :func:`prepack_linears_` (and :func:`fuse_activations_`): every :class:`PackedLinear` back to an
    ``nn.Linear`` holding the same weight and bias Parameters (the packed copies are freed), every fused activation
    back in its place; returns how many layers."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, FusedActivation):
                setattr(parent, name, child.original)
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if isinstance(child, PackedLinear)]
    for parent, name, child in swaps:
        linear = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None, device="meta")
        linear.weight, linear.bias = child.weight, child.bias
        linear.train(child.training)
        setattr(parent, name, linear)
    return len(swaps)


def _feeds(model: nn.Module, x: Any) -> list[tuple[str, str, str]]:
    """(packed layer, GELU module, activation) for each :class:`PackedLinear` whose output a ``nn.GELU`` module
    takes as its input in a forward pass on ``x``."""
    from ..models._contract import call

    made: dict[int, str] = {}  # id of an output tensor -> the packed layer that made it
    pairs: dict[str, tuple[str, str]] = {}
    names = {id(m): n for n, m in model.named_modules()}

    def made_by(module, args, out):
        made[id(out)] = names[id(module)]

    def takes(module, args):
        producer = made.get(id(args[0])) if args and isinstance(args[0], torch.Tensor) else None
        if producer is not None:
            kind = "gelu_tanh" if module.approximate == "tanh" else "gelu"
            pairs.setdefault(producer, (names[id(module)], kind))

    handles = [m.register_forward_hook(made_by) for m in model.modules() if isinstance(m, PackedLinear)]
    handles += [m.register_forward_pre_hook(takes) for m in model.modules() if type(m) is nn.GELU]
    try:
        with torch.no_grad():
            call(model, x)
    finally:
        for h in handles:
            h.remove()
    return [(layer, gelu, kind) for layer, (gelu, kind) in pairs.items()]


def fuse_activations_(model: nn.Module) -> int:
    """Let each :class:`PackedLinear` followed by a GELU compute the GELU itself, as oneDNN's post-op (in the same
    pass over the output, while it is in cache), and put a :class:`FusedActivation` (a pass-through) where the
    ``nn.GELU`` module was, in place; returns how many. Pairs are found by running the model once (a GELU whose
    input is a packed layer's output); each fusion is kept only if the model's output is unchanged (to 1e-4
    relative: the post-op's GELU rounds differently) -- a layer output that something else also reads, or a GELU
    module shared with another input, would change it. Apply after :func:`prepack_linears_`.
    ``benchmarks/cpu_micro.py gelu``: all-MiniLM's fc1 + GELU 1.06-1.08x faster at 4,096 rows.

    >>> import bigmodels
    >>> model = bigmodels.create_model("gpt_mini").eval()
    >>> prepack_linears_(model), fuse_activations_(model), model.blocks[0].mlp.fc.activation
    (17, 4, 'gelu_tanh')
    >>> unpack_linears_(model), type(model.blocks[0].mlp.act).__name__
    (17, 'GELU')
    """
    _check_cpu_inference(model, "fuse_activations_")
    from ..models._contract import call, example_inputs

    x = example_inputs(model, batch=2, seq_len=8)

    def output() -> torch.Tensor:
        with torch.no_grad():
            out = call(model, x)
        out = out if isinstance(out, torch.Tensor) else next(o for o in out if isinstance(o, torch.Tensor))
        return out.float()

    reference = output()
    fused = 0
    for layer, gelu, kind in _feeds(model, x):
        packed, parent_name, _, attr = model.get_submodule(layer), *gelu.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        act = getattr(parent, attr)
        packed.activation = kind
        setattr(parent, attr, FusedActivation(act))
        if torch.allclose(output(), reference, rtol=1e-4, atol=1e-4 * float(reference.abs().max())):
            fused += 1
        else:  # something else reads this output, or the GELU serves another input too: undo
            packed.activation = None
            setattr(parent, attr, act)
    return fused


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
_RETAINED: bool | None = None  # applied once per process


def retain_freed_memory() -> bool:
    """Let this process keep the memory it frees for its next allocations (glibc ``mallopt``), so that the large
    activations of a batched forward reuse pages instead of faulting fresh ones in; returns whether it applied.

    PyTorch's CPU tensors come from ``malloc``. glibc serves every allocation over its mmap threshold (at most 32 MB)
    with a fresh ``mmap`` and unmaps it on free, and returns heap memory above 128 KB at the top to the OS: at a
    batch of 32 x 128 tokens every feed-forward activation (6-50 MB) is new memory each call, and the page faults
    of writing it cost as much as the GELU itself. With ``M_MMAP_MAX=0`` (no mmap) and a 1 GB trim threshold, freed
    blocks stay in the heap and are reused: measured here (2 threads, 32 x 128 tokens, fresh processes alternating,
    ``python benchmarks/cpu_micro.py --threads 2 --reps 20 allocator``) all-MiniLM-L6-v2 int8 170 -> 143 ms, fp32
    261 -> 244 ms, BERT-base int8 1033 -> 752 ms, fp32 1782 -> 1635 ms; batch 1 unchanged. ONNX Runtime gets the
    same from its own arena, and jemalloc or tcmalloc (``LD_PRELOAD``) from their caches. The cost: the process
    keeps up to its peak memory (plus 1 GB of freed top) instead of returning it. Process-wide and once; a no-op
    (False) where the C library is not glibc.
    """
    global _RETAINED
    if _RETAINED is None:
        _RETAINED = False
        if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
            try:
                mallopt = ctypes.CDLL(None).mallopt
                _RETAINED = bool(mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, 1 << 30)
                                 and mallopt(_M_TOP_PAD, 64 << 20))
            except (OSError, AttributeError):
                pass
        log.debug("retain_freed_memory: %s", "applied" if _RETAINED else "not applied (not glibc)")
    return _RETAINED


def prepare_for_cpu_decoding(model: nn.Module, *, int8: bool = False) -> nn.Module:
    """Make an eval-mode CPU model decode fast, in place, with the transforms measured fastest on the CPU
    (``benchmarks/cpu_decode.md``); returns the model.

    fp32 (default): :func:`column_major_linears_` (the layout a compiled one-row step multiplies fastest with; see
    :data:`~bigmodels.infer.generate.CPU_COMPILE_OPTIONS`), :func:`prepack_linears_` (what eager steps multiply with)
    then :func:`fuse_activations_` (a GELU after a packed layer runs as its post-op: 1.01-1.07x a whole MiniLM /
    BERT-base forward at 32 x 128 tokens, 1.02x at 1 x 128), outputs equal to the plain model's to float rounding
    (greedy tokens identical). ``int8=True``: ``quantize_(model,
    Int8DynamicConfig(kernel="fbgemm", output_layer=True))`` (int8 weights, activations quantized per call with
    PyTorch's x86 int8 GEMM; the tied output layer as an int8 copy), then the same for any float Linear left.
    Either way the process keeps freed memory for reuse (:func:`retain_freed_memory`: 1.07-1.09x fp32,
    1.19-1.37x int8 at 32 x 128 tokens).

    >>> import bigmodels
    >>> model = prepare_for_cpu_decoding(bigmodels.create_model("gpt_mini").eval())
    >>> type(model.blocks[0].mlp.fc).__name__
    'PackedLinear'
    """
    if not isinstance(int8, bool):
        raise ConfigError(f"prepare_for_cpu_decoding(int8={int8!r}) must be True or False")
    _check_cpu_inference(model, "prepare_for_cpu_decoding")
    if int8:
        from .quantize import Int8DynamicConfig, quantize_

        quantize_(model, Int8DynamicConfig(kernel="fbgemm", output_layer=True))
    column_major_linears_(model)  # what a compiled step multiplies with (PackedLinear is plain F.linear there)
    prepack_linears_(model)
    fuse_activations_(model)
    retain_freed_memory()
    return model
