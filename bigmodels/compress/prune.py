"""Pruning: zero the smallest weights (unstructured), or remove whole channels, attention heads and FFN units
(structured), in place, on any registered model through its module tree.

- :func:`prune_magnitude_`: global magnitude pruning (Han et al. 2015): the ``sparsity`` fraction of smallest
  |w| over every Linear / Conv weight is set to zero, for good (no mask or parametrization is left behind). Dense
  kernels multiply zeros like any other number: this makes a model neither faster nor smaller on disk; the
  :class:`SparsityReport` says so and gives the real sparsity per layer.
- :func:`prune_structured_`: removes the ``ratio`` fraction of the least important units, rewriting the layers'
  shapes, so parameters, FLOPs and latency really drop. Transformer families (any model with attention
  modules): whole heads of every :class:`~bigmodels.nn.MultiHeadAttention` (Michel et al. 2019, "Are Sixteen Heads
  Really Better than One?") and of any other attention module that takes part through two methods,
  ``head_views()`` (each tensor that holds the heads, with a function that views a tensor of its shape as
  (num_heads, ...)) and ``keep_heads_(heads)`` (keep those heads, in place; ViT's ``SelfAttention`` does), and
  hidden units of every feed-forward pair (Linear C -> F, activation, Linear F -> C),
  ranked per layer by weight norm or first-order Taylor score |w * dL/dw| (taken per batch, then added up).
  Convolutional nets: output channels of every convolution, coupled through residual additions and batch norms
  by torch-pruning's dependency graph (Fang et al. 2023, DepGraph); the classifier keeps its outputs.

The new shapes (and changed attributes such as ``num_heads``) go into ``model.info.meta["compress"]["structure"]``:
the config still describes the model before pruning (one head count for all layers cannot say that layer 3 kept 5
heads and layer 4 kept 7), and ``bigmodels.load`` rebuilds the config's model, then gives each pruned module its
saved shapes before reading the weights; ``init=`` a pruned directory (fine-tuning through the trainer) does the
same to the model the trainer builds.

>>> from bigmodels.testing import tiny_model
>>> model = tiny_model("resnet18")
>>> report = prune_structured_(model, 0.5)
>>> report.params_after < 0.4 * report.params_before
True
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..models._contract import ModelInfo, call, example_inputs
from ..nn.attention import MultiHeadAttention

__all__ = [
    "SparsityReport", "StructureReport", "prune_magnitude_", "prune_structured_", "restore_structure",
    "IMPORTANCES", "sparsity_of", "match_compressed",
]

log = logging.getLogger(__name__)

IMPORTANCES = ("l2", "taylor")
_PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _check_ratio(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ConfigError(f"{name}={value!r} must be a fraction in (0, 1), e.g. {name}=0.5 removes half")


def _record(model: nn.Module) -> dict[str, Any] | None:
    info = getattr(model, "info", None)
    return info.meta.setdefault("compress", {}) if isinstance(info, ModelInfo) else None


# ---------------------------------------------------------------------------------------------- unstructured


@dataclass
class SparsityReport:
    """Zeros per pruned layer, and overall, after :func:`prune_magnitude_`."""

    target: float
    layers: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> {"params", "zeros", "sparsity"}
    sparsity: float = 0.0  # over the pruned weights
    note: str = ("unstructured zeros do not speed up dense kernels nor shrink the dense safetensors file; they pay "
                 "off only with sparse kernels or compression")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        lines = [f"magnitude pruning: {self.sparsity:.1%} of {sum(v['params'] for v in self.layers.values()):.0f} "
                 f"weights are zero (target {self.target:.1%}); {self.note}"]
        lines += [f"  {name}: {v['sparsity']:.1%} of {v['params']:.0f}" for name, v in self.layers.items()]
        return "\n".join(lines)


def sparsity_of(model: nn.Module, filter: Iterable[str] | None = None) -> SparsityReport:
    """The zeros of each Linear / Conv weight of ``model`` (those matching ``filter`` patterns, when given)."""
    report = SparsityReport(target=0.0)
    total = zeros = 0
    for name, w in _weights(model, filter):
        n, z = w.numel(), int((w == 0).sum())
        report.layers[name] = {"params": n, "zeros": z, "sparsity": z / n}
        total, zeros = total + n, zeros + z
    report.sparsity = zeros / max(1, total)
    return report


def _weights(model: nn.Module, filter: Iterable[str] | None) -> list[tuple[str, torch.Tensor]]:
    patterns = None if filter is None else [filter] if isinstance(filter, str) else list(filter)
    out = []
    for name, m in model.named_modules():
        if isinstance(m, _PRUNABLE) and (patterns is None or any(fnmatch.fnmatchcase(name, p) for p in patterns)):
            out.append((name, m.weight))
    return out


@torch.no_grad()
def prune_magnitude_(model: nn.Module, sparsity: float, *, filter: Iterable[str] | None = None) -> SparsityReport:
    """Set the ``sparsity`` fraction of smallest-magnitude weights to zero, ranked globally over every Linear /
    Conv weight of ``model`` (those whose module names match ``filter`` patterns, when given); in place.

    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(100, 100), torch.nn.ReLU(), torch.nn.Linear(100, 10))
    >>> round(prune_magnitude_(model, 0.9).sparsity, 3)
    0.9
    """
    _check_ratio("sparsity", sparsity)
    weights = _weights(model, filter)
    if not weights:
        matching = f" matching {filter!r}" if filter else ""
        raise ConfigError(f"{type(model).__name__} has no Linear or Conv weight{matching} to prune; widen or drop "
                          "the filter")
    magnitudes = torch.cat([w.detach().abs().flatten().float().cpu() for _, w in weights])
    k = int(round(sparsity * magnitudes.numel()))
    drop = torch.zeros(magnitudes.numel(), dtype=torch.bool)
    if k:
        drop[torch.topk(magnitudes, k, largest=False).indices] = True  # exactly k, ties broken by position
    start = 0
    for _, w in weights:
        n = w.numel()
        w.masked_fill_(drop[start:start + n].view_as(w).to(w.device), 0.0)
        start += n
    report = sparsity_of(model, filter)
    report.target = sparsity
    record = _record(model)
    if record is not None:
        record["magnitude"] = {"sparsity": report.sparsity, "filter": None if filter is None else list(filter)}
    log.info("%s", report)
    return report


# ---------------------------------------------------------------------------------------------- structured


@dataclass
class StructureReport:
    """What :func:`prune_structured_` removed: per module, its shapes before -> after; parameter counts."""

    method: str  # "transformer" (heads + FFN units) | "depgraph" (channels)
    ratio: float
    importance: str
    params_before: int = 0
    params_after: int = 0
    heads: dict[str, tuple[int, int]] = field(default_factory=dict)  # attention module -> (heads before, after)
    ffn: dict[str, tuple[int, int]] = field(default_factory=dict)  # first Linear of a pair -> (units before, after)
    channels: dict[str, tuple[int, int]] = field(default_factory=dict)  # conv / linear -> (outputs before, after)
    kept: dict[str, str] = field(default_factory=dict)  # modules left whole -> why

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        lines = [f"structured pruning ({self.method}, ratio {self.ratio}, {self.importance}): parameters "
                 f"{self.params_before:,} -> {self.params_after:,} "
                 f"({self.params_after / max(1, self.params_before):.1%})"]
        for what, table in (("heads", self.heads), ("FFN units", self.ffn), ("channels", self.channels)):
            lines += [f"  {name}: {what} {a} -> {b}" for name, (a, b) in table.items()]
        lines += [f"  kept whole: {name} ({why})" for name, why in self.kept.items()]
        return "\n".join(lines)


_Batches = Iterable[Any]
_LossFn = Callable[[nn.Module, Any], torch.Tensor]


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _snapshot(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per module: its own tensors' shapes and its plain attributes (ints, floats, tuples of ints)."""
    snap = {}
    for name, m in model.named_modules():
        tensors = {k: tuple(v.shape) for k, v in [*m._parameters.items(), *m._buffers.items()] if v is not None}
        attrs = {k: v for k, v in vars(m).items() if not k.startswith("_") and (
            isinstance(v, (int, float)) and not isinstance(v, bool)
            or isinstance(v, tuple) and all(isinstance(i, int) for i in v))}
        snap[name] = {"shapes": tensors, "attrs": attrs}
    return snap


def _structure_diff(before: dict, after: dict) -> dict[str, dict[str, Any]]:
    """The modules whose tensor shapes or attributes changed: their new shapes and the attributes that changed."""
    diff = {}
    for name, now in after.items():
        old = before.get(name)
        if old is None or (now["shapes"] == old["shapes"] and now["attrs"] == old["attrs"]):
            continue  # unchanged (an attention module changes its head count, its Linear children their shapes)
        diff[name] = {"shapes": {k: list(v) for k, v in now["shapes"].items()},
                      "attrs": {k: (list(v) if isinstance(v, tuple) else v) for k, v in now["attrs"].items()
                                if old["attrs"].get(k) != v}}
    return diff


def restore_structure(model: nn.Module, structure: dict[str, dict[str, Any]]) -> nn.Module:
    """Give the modules of ``model`` (built from the config before pruning) the shapes and attributes recorded by
    :func:`prune_structured_`, with uninitialised tensors for the weights to be loaded; records the structure in
    ``model.info.meta`` so that a checkpoint of it keeps them. Returns ``model``."""
    modules = dict(model.named_modules())
    unknown = sorted(set(structure) - set(modules))
    if unknown:
        raise CheckpointError(f"the pruned structure names modules the model does not have ({unknown[:3]}); the "
                              "checkpoint belongs to another architecture")
    for name, entry in structure.items():
        m = modules[name]
        for attr, value in entry.get("attrs", {}).items():
            setattr(m, attr, tuple(value) if isinstance(getattr(m, attr, None), tuple) else value)
        for key, shape in entry.get("shapes", {}).items():
            if m._parameters.get(key) is not None:
                old = m._parameters[key]
                m._parameters[key] = nn.Parameter(old.new_empty(shape), requires_grad=old.requires_grad)
            elif m._buffers.get(key) is not None:
                m._buffers[key] = m._buffers[key].new_zeros(shape)
    record = _record(model)
    if record is not None:
        record["structure"] = {**record.get("structure", {}), **structure}
    return model


def prune_structured_(
    model: nn.Module,
    ratio: float,
    *,
    importance: str = "l2",
    batches: _Batches | None = None,
    loss_fn: _LossFn | None = None,
    ffn_ratio: float | None = None,
) -> StructureReport:
    """Remove the ``ratio`` fraction of attention heads and FFN units (Transformer families) or of channels
    (convolutional nets) of ``model``, least important first, rewriting the layers' shapes in place.

    ``importance``: ``"l2"`` (the norm of each unit's weights) or ``"taylor"`` (|sum of w * dL/dw| over the
    unit's weights, taken on each of ``batches`` with ``loss_fn(model, batch) -> loss`` and added up; convolutional
    nets: torch-pruning's group Taylor score of the summed gradients). Every layer keeps at
    least one head / unit / channel. ``ffn_ratio``: Transformer families, the fraction of FFN units removed when
    it should differ from the heads' ``ratio`` (FFN units hold about two thirds of a block's FLOPs). Fine-tune
    afterwards (``init=`` the saved pruned model in a recipe).
    """
    _check_ratio("ratio", ratio)
    if ffn_ratio is not None:
        _check_ratio("ffn_ratio", ffn_ratio)
    if importance not in IMPORTANCES:
        raise ConfigError(f"importance={importance!r} is not known; choose one of {', '.join(IMPORTANCES)}")
    if importance == "taylor" and (batches is None or loss_fn is None):
        raise ConfigError("importance='taylor' needs gradients: pass batches=... and loss_fn=(model, batch) -> loss "
                          "(CLI: --data), or use importance='l2'")
    before = _snapshot(model)
    attention = any(hasattr(m, "num_heads") for m in model.modules())
    report = StructureReport("transformer" if attention else "depgraph", ratio, importance, _count(model))
    try:
        if attention:
            pairs = _ffn_pairs(model)  # found by a forward pass: once, for the scores and the pruning
            scores = _transformer_scores(model, pairs, importance, batches, loss_fn)
            with torch.no_grad():
                _prune_transformer(model, pairs, ratio, scores, report,
                                   ffn_ratio=ratio if ffn_ratio is None else ffn_ratio)
        else:  # torch-pruning traces the graph through autograd and reads the accumulated gradients
            if importance == "taylor":
                _accumulate_grads(model, batches, loss_fn)
            _prune_depgraph(model, ratio, importance, report)
    finally:
        if importance == "taylor":
            model.zero_grad(set_to_none=True)
    structure = _structure_diff(before, _snapshot(model))
    if not structure:
        raise ConfigError(f"nothing of {type(model).__name__} could be pruned at ratio {ratio}: "
                          f"{'; '.join(f'{k}: {v}' for k, v in list(report.kept.items())[:3]) or 'no prunable unit'}")
    record = _record(model)
    if record is not None:
        record["structure"] = {**record.get("structure", {}), **structure}
        record.setdefault("pruning", []).append({"ratio": ratio, "importance": importance, "method": report.method})
    report.params_after = _count(model)
    log.info("%s", report)
    return report


def _backward_each(model: nn.Module, batches: _Batches, loss_fn: _LossFn) -> Iterator[None]:
    """Backpropagate the loss of each batch in turn (eval mode: no dropout, the scores of a deterministic
    forward), yielding after each; gradients add up unless the caller clears them."""
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    seen = 0
    try:
        with torch.enable_grad():
            for batch in batches:
                loss_fn(model, batch).backward()
                seen += 1
                yield
    finally:
        model.train(was_training)
    if not seen:
        raise ConfigError("importance='taylor' got no batches; pass a few batches of the task's data")


def _accumulate_grads(model: nn.Module, batches: _Batches, loss_fn: _LossFn) -> None:
    for _ in _backward_each(model, batches, loss_fn):
        pass


def _score(tensors: list[tuple[torch.Tensor, torch.Tensor]], importance: str) -> torch.Tensor:
    """Per unit: the L2 norm of its weights, or |sum w * grad| (first-order Taylor), each (n_units, ...) slice."""
    total = None
    for w, g in tensors:
        flat = w.detach().float().flatten(1) if w.dim() > 1 else w.detach().float()[:, None]
        if importance == "taylor":
            grad = g.detach().float().flatten(1) if g.dim() > 1 else g.detach().float()[:, None]
            s = (flat * grad).sum(1)
        else:
            s = flat.pow(2).sum(1)
        total = s if total is None else total + s
    return total.abs() if importance == "taylor" else total.sqrt()


def _grad(t: torch.Tensor) -> torch.Tensor:
    return t.grad if t.grad is not None else torch.zeros_like(t)


def _keep(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Indices (ascending) of the units to keep: the top (1 - ratio) fraction by score, at least one."""
    n = scores.numel()
    keep = max(1, n - int(round(ratio * n)))
    return torch.topk(scores, keep).indices.sort().values


def _new_linear(m: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> None:
    """Keep the output ``rows`` and input ``cols`` of Linear ``m`` (in place, new Parameters)."""
    w, b = m.weight, m.bias
    if rows is not None:
        w = w[rows]
        b = b[rows] if b is not None else None
        m.out_features = len(rows)
    if cols is not None:
        w = w[:, cols]
        m.in_features = len(cols)
    m.weight = nn.Parameter(w.detach().clone(), requires_grad=m.weight.requires_grad)
    if b is not None:
        m.bias = nn.Parameter(b.detach().clone(), requires_grad=m.bias.requires_grad)


def _head_parts(m: MultiHeadAttention) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per head of ``m``: its rows of q, k and v (and biases) and its columns of out_proj, as (weight, grad) pairs
    shaped (num_heads, head_dim, ...)."""
    nh, hs = m.num_heads, m.head_dim
    fused = "qkv" in m._modules
    projs = [m.qkv] if fused else [m.q_proj, m.k_proj, m.v_proj]
    parts = []
    for p in projs:
        for w in ([p.weight] + ([p.bias] if p.bias is not None else [])):
            for chunk, g in zip(w.chunk(3 if fused else 1, dim=0), _grad(w).chunk(3 if fused else 1, dim=0),
                                strict=True):
                parts.append((chunk.reshape(nh, hs, *chunk.shape[1:]), g.reshape(nh, hs, *g.shape[1:])))
    out = m.out_proj.weight  # (C, nh * hs)
    parts.append((out.t().reshape(nh, hs, -1), _grad(out).t().reshape(nh, hs, -1)))
    return parts


def _ffn_parts(up: nn.Linear, down: nn.Linear) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per hidden unit of a feed-forward pair: its row of ``up`` (and bias) and its column of ``down``."""
    parts = [(up.weight, _grad(up.weight)), (down.weight.t(), _grad(down.weight).t())]
    if up.bias is not None:
        parts.append((up.bias, _grad(up.bias)))
    return parts


def _prune_heads(name: str, m: MultiHeadAttention, ratio: float, scores: torch.Tensor,
                 report: StructureReport) -> None:
    hs = m.head_dim
    fused = "qkv" in m._modules
    projs = [m.qkv] if fused else [m.q_proj, m.k_proj, m.v_proj]
    heads = _keep(scores, ratio)
    units = (heads[:, None] * hs + torch.arange(hs)).flatten()  # the kept heads' features, in order
    rows = torch.cat([units + i * m.dim for i in range(3)]) if fused else units
    for p in projs:
        _new_linear(p, rows=rows)
    _new_linear(m.out_proj, cols=units)
    report.heads[name] = (m.num_heads, len(heads))
    m.num_heads, m.dim = len(heads), len(heads) * hs


def _call_order(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The Linear layers of ``model`` in the order one forward pass on its example inputs calls them."""
    order: list[tuple[str, nn.Linear]] = []
    seen: set[int] = set()
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            def hook(mod, args, out, name=name):
                if id(mod) not in seen:
                    seen.add(id(mod))
                    order.append((name, mod))
            handles.append(m.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            call(model, example_inputs(model, batch=1, seq_len=8))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return order


def _ffn_pairs(model: nn.Module) -> list[tuple[str, nn.Linear, nn.Linear]]:
    """(name, up, down) for each feed-forward pair: Linear C -> F then, next in the forward, Linear F -> C with
    F != C, both outside attention modules and children of the same module (a gated FFN, two up projections
    multiplied, is no such pair and is left whole)."""
    inside = {id(lin) for m in model.modules() if hasattr(m, "num_heads")
              for lin in m.modules() if isinstance(lin, nn.Linear)}
    order = [(n, m) for n, m in _call_order(model) if id(m) not in inside]
    pairs = []
    for (na, a), (nb, b) in zip(order, order[1:], strict=False):
        block_a, block_b = na.rpartition(".")[0], nb.rpartition(".")[0]
        if (a.out_features == b.in_features and a.in_features == b.out_features
                and a.out_features != a.in_features and block_a == block_b):
            pairs.append((na, a, b))
    return pairs


def _transformer_scores(model: nn.Module, pairs: list[tuple[str, nn.Linear, nn.Linear]], importance: str,
                        batches: _Batches | None, loss_fn: _LossFn | None) -> dict[str, torch.Tensor]:
    """The importance of each head (per attention module) and hidden unit (per FFN pair, under the up
    projection's name). Taylor: |sum over a unit's weights of w * dL/dw| taken batch by batch and added up (the
    expected absolute effect of removing the unit, Michel et al. 2019 sec. 4.1; Molchanov et al. 2019): summing
    the gradients first would let batches that push a unit in opposite directions cancel, which they do on a
    fine-tuned model whose loss is already near its minimum."""
    units: dict[str, Callable[[], list[tuple[torch.Tensor, torch.Tensor]]]] = {}
    for name, m in model.named_modules():
        if isinstance(m, MultiHeadAttention) and not getattr(m, "qkv_packed", False):
            units[name] = lambda m=m: _head_parts(m)
        elif _prunes_its_heads(m):
            units[name] = lambda m=m: [(view(t), view(_grad(t))) for t, view in m.head_views()]
    for name, up, down in pairs:
        units[name] = lambda up=up, down=down: _ffn_parts(up, down)
    if importance != "taylor":
        return {name: _score(parts(), importance) for name, parts in units.items()}
    totals: dict[str, torch.Tensor] = {}
    for _ in _backward_each(model, batches, loss_fn):
        for name, parts in units.items():
            s = _score(parts(), "taylor")
            totals[name] = s if name not in totals else totals[name] + s
        model.zero_grad(set_to_none=True)
    return totals


def _prunes_its_heads(m: nn.Module) -> bool:
    """Whether ``m`` is an attention module of another kind that prunes its own heads (see the module docstring)."""
    return hasattr(m, "num_heads") and callable(getattr(m, "head_views", None)) and callable(
        getattr(m, "keep_heads_", None))


def _prune_transformer(model: nn.Module, pairs: list[tuple[str, nn.Linear, nn.Linear]], ratio: float,
                       scores: dict[str, torch.Tensor], report: StructureReport, ffn_ratio: float) -> None:
    for name, m in model.named_modules():
        if isinstance(m, MultiHeadAttention):
            if getattr(m, "qkv_packed", False):
                report.kept[name] = "q/k/v packed by pack_qkv_: call unpack_qkv_(model) first"
            else:
                _prune_heads(name, m, ratio, scores[name], report)
        elif _prunes_its_heads(m):
            heads = _keep(scores[name], ratio)
            report.heads[name] = (m.num_heads, len(heads))
            m.keep_heads_(heads)
        elif hasattr(m, "num_heads") and any(isinstance(c, nn.Module) for c in m.children()):
            report.kept[name] = (f"{type(m).__name__} is not bigmodels.nn.MultiHeadAttention and has no "
                                 "head_views() / keep_heads_() (its heads are kept; its FFN is pruned)")
    for name, up, down in pairs:
        units = _keep(scores[name], ffn_ratio)
        report.ffn[name] = (up.out_features, len(units))
        _new_linear(up, rows=units)
        _new_linear(down, cols=units)


def _prune_depgraph(model: nn.Module, ratio: float, importance: str, report: StructureReport) -> None:
    try:
        import torch_pruning as tp
    except ImportError:
        raise ConfigError('structured pruning of convolutional and MLP nets (channels, hidden units) needs '
                          'torch-pruning: pip install '
                          '"bigmodels[compress]"') from None
    order = _last_layers(model)
    ignored = [order[-1][1]] if order else []  # the classifier keeps one output per class
    if ignored:
        report.kept[order[-1][0]] = "the classifier: one output per class"
    x = example_inputs(model, batch=1)
    imp = (tp.importance.GroupTaylorImportance() if importance == "taylor"
           else tp.importance.GroupMagnitudeImportance(p=2))
    before = {n: m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features
              for n, m in model.named_modules() if isinstance(m, _PRUNABLE)}
    was_training = model.training
    model.eval()
    try:
        pruner = tp.pruner.MetaPruner(model, x, importance=imp, pruning_ratio=ratio, ignored_layers=ignored)
        pruner.step()
    except Exception as e:  # noqa: BLE001 (the tracer's failures come in many types)
        raise ConfigError(f"torch-pruning could not trace {type(model).__name__} for structured pruning "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); channel pruning "
                          "works on convolutional and MLP nets (resnet, cnn, mlp, efficientnet)") from None
    finally:
        model.train(was_training)
    for n, m in model.named_modules():
        if n in before:
            now = m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features
            if now != before[n]:
                report.channels[n] = (before[n], now)


def _last_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The Linear / Conv layers in the order a forward pass calls them."""
    order: list[tuple[str, nn.Module]] = []
    handles = [m.register_forward_hook(lambda mod, a, o, name=name: order.append((name, mod)))
               for name, m in model.named_modules() if isinstance(m, _PRUNABLE)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            call(model, example_inputs(model, batch=1))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return order


def match_compressed(model: nn.Module, source: nn.Module, path: Any) -> None:
    """Before ``load_matching`` copies the weights of a compressed ``source`` (read from ``path``) into ``model``:
    a structurally pruned source gives ``model`` its shapes (``init=`` a pruned model fine-tunes it); a quantized
    source is refused (its int8 weights cannot be trained)."""
    record = source.info.meta.get("compress", {})
    if record.get("quantization"):
        raise CheckpointError(f"{path} is a quantized model ({record['quantization']['method']}), whose integer "
                              "weights cannot be fine-tuned; start from the float model and quantize after training")
    structure = record.get("structure")
    own = getattr(model, "info", None)
    if structure and not (isinstance(own, ModelInfo) and own.meta.get("compress", {}).get("structure")):
        restore_structure(model, structure)
