"""Speed transforms that act on any model through its module tree, applied on purpose by the caller.

Models stay pure (DESIGN.md, rule 7): nothing here is imported by a model and nothing here imports a family.

- :func:`fold_batchnorm`: fold each eval-mode batch norm into the convolution (or linear layer) feeding it.
- :func:`optimize_for_inference`: eval mode, BN folding, channels-last, a dtype and ``torch.compile`` in one call.
- :func:`compile_model`: ``torch.compile`` with the mode checked up front (see :data:`COMPILE_MODES`).
- :func:`pack_qkv_` / :func:`unpack_qkv_`: one (C -> 3C) q/k/v projection per self-attention module instead of
  three, and back (they live in ``nn/attention.py``, next to the block they restructure, so ``infer`` may use them).

>>> import bigmodels
>>> model = optimize_for_inference(bigmodels.create_model("resnet_mini"))
>>> model(torch.zeros(1, 1, 8, 8)).shape
torch.Size([1, 10])
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import Counter
from collections.abc import Iterator, Sequence

import torch
import torch.fx
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ConfigError
from ..nn.attention import pack_qkv_, unpack_qkv_

__all__ = [
    "COMPILE_MODES",
    "compile_model",
    "fold_batchnorm",
    "optimize_for_inference",
    "pack_qkv_",
    "unpack_qkv_",
]

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------- batch-norm folding
# In eval mode a batch norm is a per-channel affine map, y = (x - mean) * gamma / sqrt(var + eps) + beta, so after a
# convolution (linear in its weight, per output channel) it folds into that convolution's weight and bias
# (Ioffe & Szegedy 2015, section 3.2; Jacob et al. 2018, section 3.2):
#     w' = w * s,  b' = (b - mean) * s + beta,  with s = gamma / sqrt(var + eps) per output channel.

# The layers each batch norm folds into: those whose output keeps the channels in dim 1 (for Linear: a (B, F)
# output, the only layout where BatchNorm1d(F) normalises the linear layer's features).
_FOLDS_INTO: dict[type[nn.Module], tuple[type[nn.Module], ...]] = {
    nn.BatchNorm1d: (nn.Linear, nn.Conv1d),
    nn.BatchNorm2d: (nn.Conv2d,),
    nn.BatchNorm3d: (nn.Conv3d,),
    nn.SyncBatchNorm: (nn.Conv1d, nn.Conv2d, nn.Conv3d),  # in eval mode it is a plain batch norm
}
_NORMS = tuple(_FOLDS_INTO)
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _stock(module: nn.Module, bases: Sequence[type[nn.Module]]) -> type[nn.Module] | None:
    """The base ``module`` is an unmodified instance of (its forward is the base's), else None. A subclass that
    rewrites forward, such as a weight-standardised conv, computes something else: folding into it would be wrong."""
    for base in bases:
        if isinstance(module, base) and type(module).forward is base.forward and (
            getattr(type(module), "_conv_forward", None) is getattr(base, "_conv_forward", None)
        ):
            return base
    return None


class _ShapedInput(torch.fx.Proxy):
    """The model's input while tracing, with a known shape: input checks at the top of a forward
    (``x.dim() != 4``, ``x.shape[1] != in_chans``) evaluate to plain Python values instead of stopping the trace.
    Everything computed from the input stays symbolic; the graph is only read, never run, so the constants do no
    harm."""

    def __init__(self, node: torch.fx.Node, tracer: torch.fx.Tracer, shape: Sequence[int]) -> None:
        super().__init__(node, tracer)
        self._known_shape = torch.Size(shape)

    @property
    def shape(self) -> torch.Size:  # type: ignore[override]
        return self._known_shape

    @property
    def ndim(self) -> int:  # type: ignore[override]
        return len(self._known_shape)

    def dim(self) -> int:  # type: ignore[override]
        return len(self._known_shape)

    def size(self, dim: int | None = None) -> torch.Size | int:  # type: ignore[override]
        return self._known_shape if dim is None else self._known_shape[dim]


class _Tracer(torch.fx.Tracer):
    """torch.fx tracing that keeps every conv, linear and batch norm (subclasses too) as one ``call_module`` node,
    gives the first input a known shape (see :class:`_ShapedInput`) and records which modules the forward called."""

    def __init__(self, input_shape: Sequence[int] | None) -> None:
        super().__init__()
        self.input_shape = input_shape
        self.entered: set[str] = set()  # qualified names of every module called, leaf or not

    def proxy(self, node: torch.fx.Node) -> torch.fx.Proxy:
        if node.op == "placeholder" and self.input_shape is not None:
            shape, self.input_shape = self.input_shape, None  # the first placeholder only
            return _ShapedInput(node, self, shape)
        return super().proxy(node)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, _LAYERS + _NORMS) or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward, args, kwargs):  # noqa: ANN001, ANN201 - torch.fx's signature
        with contextlib.suppress(NameError):  # a module outside the traced tree: torch.fx reports it itself
            self.entered.add(self.path_of_module(m))
        return super().call_module(m, forward, args, kwargs)


@contextlib.contextmanager
def _restoring_attributes(root: nn.Module) -> Iterator[None]:
    """Put every module's attributes back after tracing: a forward that caches a value on ``self`` would otherwise
    keep a Proxy there."""
    saved = [(m, dict(vars(m)), dict(m._parameters), dict(m._buffers), dict(m._modules)) for m in root.modules()]
    try:
        yield
    finally:
        for m, attrs, params, buffers, modules in saved:
            for now, before in ((m._parameters, params), (m._buffers, buffers), (m._modules, modules)):
                now.clear()
                now.update(before)
            vars(m).clear()
            vars(m).update(attrs)


def _inferred_input_shape(module: nn.Module) -> tuple[int, ...] | None:
    """(1, in_chans, H, W) from a vision config (``in_chans``, and ``img_size`` or 224), else None."""
    cfg = getattr(module, "config", None)
    in_chans = getattr(cfg, "in_chans", None)
    if not isinstance(in_chans, int) or in_chans < 1:
        return None
    side = getattr(cfg, "img_size", None) or 224
    h, w = (side, side) if isinstance(side, int) else tuple(side)[:2]
    return (1, in_chans, int(h), int(w))


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _pairs_in_graph(graph: torch.fx.Graph, root: nn.Module, prefix: str) -> Iterator[tuple[str, str]]:
    """(layer, norm) names where the norm's only input is the layer's output and nothing else reads that output."""
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(root.get_submodule(node.target), _NORMS):
            continue
        src = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        if not (isinstance(src, torch.fx.Node) and src.op == "call_module" and len(src.users) == 1):
            continue
        if not isinstance(root.get_submodule(src.target), _LAYERS):
            continue
        if calls[node.target] > 1 or calls[src.target] > 1:  # a module reused elsewhere must keep its weights
            logger.info("fold_batchnorm: %s -> %s is called more than once; left as is",
                        _join(prefix, src.target), _join(prefix, node.target))
            continue
        yield _join(prefix, src.target), _join(prefix, node.target)


def _find_pairs(model: nn.Module, input_shape: Sequence[int] | None) -> tuple[list[tuple[str, str]], list[str]]:
    """Trace ``model`` and return the candidate (layer, norm) pairs and the norms that could not be checked.

    Where a forward cannot be traced, each child is traced on its own (the norms directly under that forward stay
    unchecked); submodules the forward never calls (auxiliary heads run by another method) are traced on their own
    too, through their own forward."""
    pairs: list[tuple[str, str]] = []
    unchecked: list[str] = []

    def visit_uncalled(module: nn.Module, prefix: str, rel: str, called: set[str]) -> None:
        for name, child in module.named_children():
            if _join(rel, name) in called:
                visit_uncalled(child, prefix, _join(rel, name), called)
            else:
                visit(child, _join(prefix, _join(rel, name)), _inferred_input_shape(child))

    def visit(module: nn.Module, prefix: str, shape: Sequence[int] | None) -> None:
        if isinstance(module, _NORMS) or not any(isinstance(m, _NORMS) for m in module.modules()):
            return
        tracer = _Tracer(shape)
        try:
            with _restoring_attributes(module):
                graph = tracer.trace(module)
        except Exception as e:  # noqa: BLE001 - any failure to trace: look one level down instead
            logger.debug("fold_batchnorm: cannot trace %s: %s: %s", prefix or "the model", type(e).__name__, e)
            for name, child in module.named_children():
                if isinstance(child, _NORMS):
                    unchecked.append(_join(prefix, name))
                visit(child, _join(prefix, name), _inferred_input_shape(child))
            return
        pairs.extend(_pairs_in_graph(graph, module, prefix))
        called = {name.rsplit(".", i)[0] for name in tracer.entered for i in range(name.count(".") + 1)}
        visit_uncalled(module, prefix, "", called)  # called: each module the forward called, and its ancestors

    visit(model, "", input_shape if input_shape is not None else _inferred_input_shape(model))
    return pairs, unchecked


def _why_not(layer: nn.Module, norm: nn.Module, shared: set[int]) -> str | None:
    """Why ``norm`` cannot fold into ``layer`` (None: it can)."""
    base = _stock(norm, _NORMS)
    if base is None or _stock(layer, _FOLDS_INTO[base]) is None:
        return f"{type(norm).__name__} after {type(layer).__name__} is not a pair this folds"
    if not norm.track_running_stats or norm.running_mean is None or norm.running_var is None:
        return "it has no running statistics (track_running_stats=False normalises with batch statistics)"
    out_features = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    if norm.num_features != out_features:
        return f"num_features={norm.num_features} does not match the layer's {out_features} outputs"
    if any(m._forward_hooks or m._forward_pre_hooks for m in (layer, norm)) or parametrize.is_parametrized(layer):
        return "a forward hook or a parametrization (pruning, weight norm) is attached"
    if any(id(p) in shared for p in (layer.weight, layer.bias) if p is not None):
        return "its weight is shared with another module"
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in layer.parameters()):
        return "the layer is lazy and not yet initialised"
    return None


@torch.no_grad()
def _fold(layer: nn.Module, norm: nn.Module) -> None:
    """Fold ``norm``'s eval-mode affine map into ``layer``'s weight and bias, in place (same tensors, dtype and
    memory format). The arithmetic runs in float32 at least, so bf16/fp16 weights round once, at the end."""
    w = layer.weight  # (C_out, ...)
    like = dict(device=w.device, dtype=torch.promote_types(w.dtype, torch.float32))
    mean, var = norm.running_mean.to(**like), norm.running_var.to(**like)  # (C_out,)
    gamma = norm.weight.to(**like) if norm.weight is not None else torch.ones_like(var)  # affine=False: 1 and 0
    beta = norm.bias.to(**like) if norm.bias is not None else torch.zeros_like(mean)
    scale = gamma * torch.rsqrt(var + norm.eps)  # (C_out,)
    bias = layer.bias.to(**like) if layer.bias is not None else torch.zeros_like(mean)
    w.copy_(w.to(like["dtype"]) * scale.view(-1, *[1] * (w.dim() - 1)))  # copy_ casts back and keeps the layout
    folded_bias = (bias - mean) * scale + beta  # (C_out,)
    if layer.bias is None:  # convs before a batch norm usually have none
        layer.bias = nn.Parameter(folded_bias.to(w.dtype), requires_grad=w.requires_grad)
    else:
        layer.bias.copy_(folded_bias)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def fold_batchnorm(model: nn.Module, *, input_shape: Sequence[int] | None = None) -> nn.Module:
    """Fold every eval-mode batch norm that directly follows a convolution (or a linear layer, for BatchNorm1d)
    into that layer's weight and bias, and replace the norm with ``nn.Identity``; returns ``model`` itself.

    The model keeps its class, methods and attribute names; only its state dict changes (no ``bn`` entries, a
    ``bias`` on each folded layer), so load checkpoints before folding. Pairs are found by torch.fx tracing: a norm
    folds when its only input is a conv/linear output that nothing else reads and neither module is called twice.
    ``input_shape`` (e.g. ``(1, 3, 224, 224)``) lets a forward that checks its input's shape trace; by default it
    comes from ``model.config`` (``in_chans``, ``img_size``). Where a forward still cannot be traced, its children
    are traced one by one and the norms directly under it stay (logged as a warning). Norms without running
    statistics (``track_running_stats=False``) stay too; ``affine=False`` norms fold.

    >>> import bigmodels
    >>> model = fold_batchnorm(bigmodels.create_model("resnet_mini").eval())
    >>> any(isinstance(m, nn.BatchNorm2d) for m in model.modules()), type(model.layer1[0].bn1).__name__
    (False, 'Identity')
    """
    if model.training:
        raise ConfigError(
            "fold_batchnorm needs a model in eval mode: in training mode batch norm uses each batch's statistics, "
            "which cannot be folded into weights; call model.eval() first"
        )
    if not any(isinstance(m, _NORMS) for m in model.modules()):
        return model
    pairs, unchecked = _find_pairs(model, input_shape)
    counts = Counter(id(p) for _, m in model.named_modules(remove_duplicate=False) for p in m._parameters.values())
    shared_params = {key for key, n in counts.items() if n > 1}
    module_names = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    folded = 0
    for layer_name, norm_name in dict.fromkeys(pairs):
        layer, norm = model.get_submodule(layer_name), model.get_submodule(norm_name)
        if norm.training:
            raise ConfigError(f"fold_batchnorm: {norm_name} is in training mode; call model.eval() first")
        reason = _why_not(layer, norm, shared_params)
        if reason is None and (module_names[id(layer)] > 1 or module_names[id(norm)] > 1):
            reason = "the module is registered under more than one name"
        if reason is not None:
            logger.warning("fold_batchnorm: %s after %s left as is: %s", norm_name, layer_name, reason)
            continue
        _fold(layer, norm)
        _replace(model, norm_name, nn.Identity().eval())
        folded += 1
    if unchecked:
        logger.warning(
            "fold_batchnorm: %s left as is: their parent's forward could not be traced by torch.fx; pass "
            "input_shape=(1, C, H, W) if that forward checks its input's shape", ", ".join(unchecked))
    logger.info("fold_batchnorm: folded %d batch norm(s) into the layer before them", folded)
    return model


# ---------------------------------------------------------------------------------------------------- compiling

COMPILE_MODES: dict[str, str] = {  # torch.compile's modes (https://pytorch.org/docs/stable/generated/torch.compile.html)
    "default": "Inductor's fused kernels; the balance of compile time, speed and memory",
    "reduce-overhead": "adds CUDA graphs: removes Python and kernel-launch overhead (small batches, decoding); "
                       "needs static shapes, keeps extra memory, and an output is overwritten by the next call "
                       "(clone it to keep it)",
    "max-autotune": "benchmarks Triton templates for each matmul and conv, plus CUDA graphs: the fastest "
                    "kernels after minutes of compiling",
    "max-autotune-no-cudagraphs": "max-autotune without CUDA graphs: for dynamic shapes or tight memory",
}


def _check_mode(mode: str | None) -> None:
    if mode is not None and mode not in COMPILE_MODES:
        raise ConfigError(
            f"compile mode {mode!r} is not one of {', '.join(COMPILE_MODES)}; use one of them "
            "(or None for torch.compile's default)"
        )


def compile_model(
    model: nn.Module, mode: str | None = "default", *, dynamic: bool | None = None, fullgraph: bool = False,
    backend: str = "inductor", freeze: bool = False,
) -> nn.Module:
    """``torch.compile(model, ...)`` with ``mode`` checked up front; compiling itself happens at the first call.

    Modes (:data:`COMPILE_MODES`): ``"default"``; ``"reduce-overhead"`` (CUDA graphs: small batches, static
    shapes); ``"max-autotune"`` (kernel autotuning + CUDA graphs, long compiles); ``"max-autotune-no-cudagraphs"``.
    CUDA graphs only apply on GPUs; on a CPU every mode compiles C++ kernels. ``dynamic=None`` recompiles once
    for a new input shape and then treats that dimension as dynamic; ``fullgraph=True`` fails instead of splitting
    the graph where Python code cannot be captured; ``backend="eager"`` runs the captured graph uncompiled
    (to tell a capture bug from a compiler bug). The wrapper's ``forward`` is compiled; other methods
    (``forward_features``) run the original model, and its state dict keys gain an ``_orig_mod.`` prefix.

    ``freeze=True`` (Inductor's freezing, for inference) compiles the weights in as constants: folded, and on the
    CPU float32 Linear layers laid out for MKL's packed GEMM at the shapes traced, with the operations between them
    fused. It applies to calls under ``torch.inference_mode()`` or ``torch.no_grad()`` (with gradients on, the graph
    is compiled unfrozen). What was packed or folded keeps the values the weights had when the graph was built: after
    changing them (an optimizer step, ``load_state_dict``), compile again. Dynamo reads the setting while it traces,
    at a call, so the compiled module turns it on for the duration of each of its calls (process-wide; passing
    ``options={"freezing": True}`` to ``torch.compile`` alone leaves the parameters unfrozen). Measured on 2 cores of
    an Intel Xeon (``python benchmarks/cpu_micro.py frozen``): an all-MiniLM-L6-v2 / BERT-base forward of 1 x 128
    tokens 1.19x / 1.13x the eager model with oneDNN-packed weights
    (:func:`~bigmodels.compress.layout.prepare_for_cpu_decoding`), at 32 x 128 1.02x / 1.00x.

    >>> compiled = compile_model(nn.Linear(4, 2), "default", backend="eager")
    >>> compiled(torch.zeros(3, 4)).shape
    torch.Size([3, 2])
    """
    _check_mode(mode)
    if not isinstance(freeze, bool):
        raise ConfigError(f"compile_model(freeze={freeze!r}) must be True or False")
    if freeze and backend != "inductor":
        raise ConfigError(f"freeze=True is Inductor's freezing; backend={backend!r} has none: use backend='inductor' "
                          "or leave freeze off")
    compiled = torch.compile(model, mode=mode, dynamic=dynamic, fullgraph=fullgraph, backend=backend)
    if freeze:
        compiled.register_forward_pre_hook(_freezing_on)
        compiled.register_forward_hook(_freezing_off, always_call=True)  # after a failed call too
    return compiled


# Inductor's ``freezing`` setting is on while at least one call of a frozen compiled model runs (counted, so that
# concurrent calls in threads leave it as they found it) and restored after the last one. Module-level functions,
# so that the compiled module's hooks copy and pickle by name.
_freezing_lock = threading.Lock()
_freezing_state = {"calls": 0, "before": False}


def _freezing_on(module: nn.Module, args: tuple) -> None:
    from torch._inductor import config

    with _freezing_lock:
        if _freezing_state["calls"] == 0:
            _freezing_state["before"], config.freezing = config.freezing, True
        _freezing_state["calls"] += 1


def _freezing_off(module: nn.Module, args: tuple, output: object) -> None:
    from torch._inductor import config

    with _freezing_lock:
        _freezing_state["calls"] -= 1
        if _freezing_state["calls"] == 0:
            config.freezing = _freezing_state["before"]


# ---------------------------------------------------------------------------------------------------- inference

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16, "float64": torch.float64}


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    resolved = _DTYPES.get(dtype) if isinstance(dtype, str) else dtype
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ConfigError(f"dtype={dtype!r} is not a floating-point dtype; use one of {', '.join(_DTYPES)}")
    return resolved


def optimize_for_inference(
    model: nn.Module, *, fold_bn: bool = True, channels_last: bool | None = None,
    dtype: torch.dtype | str | None = None, compile: str | None = None, freeze: bool = False,
) -> nn.Module:
    """Eval mode, batch norms folded (:func:`fold_batchnorm`), optionally channels-last weights, a dtype and
    ``torch.compile(mode=compile)``; returns ``model`` (changed in place) or, with ``compile``, its compiled wrapper.
    ``freeze=True`` (with ``compile``) compiles the weights in as constants (:func:`compile_model`'s ``freeze``).

    ``channels_last=None`` turns it on for models with a Conv2d whose weights are on a CUDA device (tensor-core
    convolutions run NHWC; PyTorch picks the NHWC kernels from the weights, so NCHW inputs work, and converting
    them too saves one transpose). Batch norms fold in the model's current precision before the cast.

    >>> import bigmodels
    >>> model = optimize_for_inference(bigmodels.create_model("cnn_small"), dtype="bfloat16")
    >>> model(torch.zeros(2, 1, 8, 8, dtype=torch.bfloat16)).dtype
    torch.bfloat16
    """
    _check_mode(compile)  # fail before changing the model
    if not isinstance(freeze, bool):
        raise ConfigError(f"optimize_for_inference(freeze={freeze!r}) must be True or False")
    if freeze and compile is None:
        raise ConfigError("optimize_for_inference(freeze=True) freezes the weights into a compiled graph: pass "
                          "compile='default' (or another mode) as well, or leave freeze off")
    cast = _as_dtype(dtype) if dtype is not None else None
    model.eval()
    if fold_bn:
        fold_batchnorm(model)
    if channels_last is None:
        first = next(model.parameters(), None)
        on_cuda = first is not None and first.device.type == "cuda"
        channels_last = on_cuda and any(isinstance(m, nn.Conv2d) for m in model.modules())
    if cast is not None:
        model.to(dtype=cast)
    if channels_last:
        model.to(memory_format=torch.channels_last)  # 4-D weights only
    return compile_model(model, compile, freeze=freeze) if compile is not None else model
