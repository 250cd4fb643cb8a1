"""Activation analysis: what each layer of a model computes over a set of inputs.

- :func:`activation_stats`: per layer the mean and std of its outputs, the fraction of dead units (a unit of a
  ReLU-family output that is never > 0 over the whole batch) and of saturated units (near the activation's bound
  for tanh / sigmoid / ReLU6 / hardtanh, or above a stated ``threshold`` for unbounded outputs).
- :func:`layer_projections`: a 2-D PCA of each layer's representation (mean-pooled over tokens or spatial
  positions), coloured by label, as one PNG grid.
- :func:`linear_probes`: a logistic-regression probe per layer on a fixed train/test split (Alain & Bengio 2016):
  how well the label can be read from each layer.

The layers come from the contract, never from a family: a vision model's ``forward_intermediates(x)`` (one
output per stage); for text models each Transformer block (the members of a ``ModuleList`` / ``Sequential`` of
one block class that holds an attention module), or the recurrent layer of an RNN; or any modules named by the
caller (``layers=["layer1.0.relu", ...]``; ``layers="activations"``: every activation module), read with forward
hooks. A module called more than once in one forward pass (a shared ReLU) reports its last call.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, DataError
from ..models._contract import call, kind_of
from ..nn.attention import attention_modules

__all__ = ["activation_stats", "layer_representations", "layer_projections", "linear_probes", "activation_report",
           "Projections", "contract_layers", "load_labelled"]

# activation modules -> (name, bounds); bounds None: unbounded above (ReLU: 0 below, the dead side)
_ACTIVATIONS: dict[type, str] = {
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.Hardtanh: "hardtanh",
    nn.Hardsigmoid: "hardsigmoid", nn.Softsign: "softsign", nn.GELU: "gelu", nn.SiLU: "silu", nn.Mish: "mish",
    nn.Hardswish: "hardswish", nn.ELU: "elu", nn.SELU: "selu", nn.CELU: "celu", nn.LeakyReLU: "leaky_relu",
    nn.Softplus: "softplus", nn.PReLU: "prelu",
}
_RELU_FAMILY = ("relu", "relu6", "nonnegative")  # outputs whose units can die: exactly 0 for inputs <= 0


def _bounds(module: nn.Module | None, kind: str) -> tuple[float | None, float | None] | None:
    """(lower, upper) saturation bounds of an activation (None: that side does not saturate); None: unbounded."""
    if isinstance(module, nn.Hardtanh) and not isinstance(module, nn.ReLU6):
        return float(module.min_val), float(module.max_val)
    return {"tanh": (-1.0, 1.0), "softsign": (-1.0, 1.0), "sigmoid": (0.0, 1.0), "hardsigmoid": (0.0, 1.0),
            "relu6": (None, 6.0)}.get(kind)  # ReLU6's 0 is its dead side, not saturation


def _activation_kind(module: nn.Module) -> str | None:
    return next((name for cls, name in _ACTIVATIONS.items() if type(module) is cls), None)


# ---------------------------------------------------------------------------------------------- layers


def _block_stacks(model: nn.Module) -> list[str]:
    """The names of the Transformer blocks: members of a ModuleList / Sequential whose children are all of one
    class that holds an attention module, outermost stacks only."""
    attention = [name for name, _ in attention_modules(model)]
    blocks: list[str] = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.ModuleList | nn.Sequential) or not len(m):
            continue
        children = list(m.named_children())
        if len({type(c) for _, c in children}) != 1:
            continue
        prefix = f"{name}." if name else ""
        members = [f"{prefix}{n}" for n, _ in children]
        if any(a.startswith(f"{members[0]}.") for a in attention) and not any(
                b == p or members[0].startswith(f"{b}.") for b in blocks for p in members):
            blocks += members
    return blocks


def contract_layers(model: nn.Module) -> list[str] | None:
    """The default layers of ``model``: None for a vision model (its ``forward_intermediates``); for a text
    model the names of its Transformer blocks, else of its recurrent layers. A ConfigError when it has none."""
    if kind_of(model) == "vision":
        return None
    blocks = _block_stacks(model) or [n for n, m in model.named_modules() if isinstance(m, nn.RNNBase)]
    if not blocks:
        raise ConfigError(f"{type(model).__name__} has no Transformer blocks or recurrent layers to read; name "
                          "the modules to analyse: layers=['<module name>', ...] (see model.named_modules())")
    return blocks


def _resolve(model: nn.Module, layers: str | Sequence[str] | None) -> list[str] | None:
    if layers is None:
        return contract_layers(model)
    if layers == "activations":
        names = [n for n, m in model.named_modules() if _activation_kind(m) is not None]
        if not names:
            raise ConfigError(f"{type(model).__name__} has no activation modules (its activations are functions); "
                              "name the modules to analyse: layers=['<module name>', ...]")
        return names
    if isinstance(layers, str) or not len(layers):
        raise ConfigError(f"layers={layers!r}: give a list of module names, 'activations', or None for the "
                          "contract's layers")
    known = dict(model.named_modules())
    missing = [n for n in layers if n not in known or n == ""]
    if missing:
        sample = ", ".join(list(known)[1:12])
        raise ConfigError(f"layers {missing} are not modules of {type(model).__name__}; its modules are named "
                          f"like {sample}, ... (see model.named_modules())")
    return list(layers)


# ---------------------------------------------------------------------------------------------- reading


def _batches(inputs: Any) -> Iterator[tuple[Any, torch.Tensor | None]]:
    """(model input, attention mask or None) per batch: a tensor, a dict of keyword arguments, an (x, y) pair,
    or an iterable of those."""
    if isinstance(inputs, torch.Tensor | dict):
        inputs = [inputs]
    for b in inputs:
        if isinstance(b, tuple | list):
            b = b[0]  # (inputs, labels)
        if isinstance(b, dict):
            yield b, b.get("attention_mask")
        elif isinstance(b, torch.Tensor):
            yield b, None
        else:
            raise DataError(f"a batch must be a tensor, a dict of model arguments or an (inputs, labels) pair, got "
                            f"{type(b).__name__}")


def _outputs(model: nn.Module, x: Any, names: list[str] | None) -> list[tuple[str, torch.Tensor, str | None,
                                                                                 nn.Module | None]]:
    """One forward pass: (layer name, output, activation kind or None, its activation module) per layer."""
    activations = [(m, k) for m in model.modules() if (k := _activation_kind(m)) is not None]
    seen: dict[int, tuple[torch.Tensor, nn.Module, str]] = {}  # id(module) -> its last output
    taken: dict[str, torch.Tensor] = {}
    handles = []

    def first(out: Any) -> torch.Tensor:
        return out[0] if isinstance(out, tuple | list) else out

    try:
        for m, k in activations:
            handles.append(m.register_forward_hook(
                lambda mod, _i, out, k=k: seen.__setitem__(id(mod), (first(out), mod, k))))
        if names is not None:
            modules = dict(model.named_modules())
            for n in names:
                handles.append(modules[n].register_forward_hook(
                    lambda _m, _i, out, n=n: taken.__setitem__(n, first(out))))
            call(model, x)
            found = [(n, taken[n]) for n in names if n in taken]
            if not found:
                raise ConfigError(f"none of the layers {names[:4]}... ran in the forward pass; name modules the "
                                  "model calls")
        else:
            found = [(f"intermediates[{i}]", t) for i, t in enumerate(model.forward_intermediates(x))]
    finally:
        for h in handles:
            h.remove()
    by_ptr = {(o.data_ptr(), tuple(o.shape)): (mod, k) for o, mod, k in seen.values() if isinstance(o, torch.Tensor)}
    out = []
    for n, t in found:
        mod, k = by_ptr.get((t.data_ptr(), tuple(t.shape)), (None, None))
        out.append((n, t, k, mod))
    return out


def _packed(t: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """A (N, D) output of the real tokens only (a model that drops padding between its layers)."""
    return (mask is not None and t.dim() == 2 and mask.dim() == 2 and t.shape[0] != mask.shape[0]
            and t.shape[0] == int(mask.sum()))


def _unit_rows(t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """A layer's output -> (values, units): units are channels of feature maps (B, C, H, W), else the last axis;
    padded tokens (mask 0) of a (B, T, D) output dropped."""
    t = t.detach().float()
    if t.dim() >= 4:
        return t.movedim(1, -1).reshape(-1, t.shape[1])
    if t.dim() == 3 and mask is not None and tuple(mask.shape) == tuple(t.shape[:2]):
        return t[mask.bool()]
    return t.reshape(-1, t.shape[-1]) if t.dim() >= 2 else t.reshape(-1, 1)


def _pooled(t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, ...) -> (B, D): the mean over spatial positions or (unpadded) tokens."""
    t = t.detach().float()
    if _packed(t, mask):  # (N real tokens, D), row-major: the mean of each example's tokens
        example = mask.bool().nonzero()[:, 0]
        counts = torch.bincount(example, minlength=mask.shape[0]).clamp(min=1).to(t.dtype)[:, None]
        return torch.zeros(mask.shape[0], t.shape[1], dtype=t.dtype).index_add_(0, example.cpu(), t.cpu()) / counts
    if t.dim() >= 4:
        return t.flatten(2).mean(-1)
    if t.dim() == 3:
        if mask is not None and tuple(mask.shape) == tuple(t.shape[:2]):
            m = mask.to(t.dtype)[..., None]
            return (t * m).sum(1) / m.sum(1).clamp(min=1.0)
        return t.mean(1)
    return t.reshape(t.shape[0], -1)


@dataclass
class _Accumulator:
    shape: tuple[int, ...]
    kind: str | None
    module: nn.Module | None
    n: int = 0
    total: float = 0.0
    squares: float = 0.0
    low: float = math.inf
    high: float = -math.inf
    unit_max: torch.Tensor | None = None
    near: torch.Tensor | None = None  # per unit: how many values sit near the saturation bound
    rows: int = 0
    pooled: list[torch.Tensor] = field(default_factory=list)


def _near_bound(rows: torch.Tensor, kind: str | None, module: nn.Module | None, threshold: float | None,
                margin: float) -> torch.Tensor | None:
    bounds = _bounds(module, kind or "")
    if bounds is not None:
        lo, hi = bounds
        span = (hi if hi is not None else 0.0) - (lo if lo is not None else 0.0)
        eps = margin * span
        near = torch.zeros_like(rows, dtype=torch.bool)
        if lo is not None:
            near |= rows <= lo + eps
        if hi is not None:
            near |= rows >= hi - eps
        return near
    if threshold is not None:
        return rows.abs() > threshold
    return None


def _read(model: nn.Module, inputs: Any, layers: str | Sequence[str] | None, *, pooled: bool,
          threshold: float | None = None, margin: float = 0.01) -> dict[str, _Accumulator]:
    names = _resolve(model, layers)
    acc: dict[str, _Accumulator] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x, mask in _batches(inputs):
                for name, t, kind, module in _outputs(model, x, names):
                    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                        continue
                    a = acc.setdefault(name, _Accumulator(tuple(t.shape[1:]), kind, module))
                    rows = _unit_rows(t, mask)  # (values, units)
                    if not len(rows):
                        continue
                    a.n += rows.numel()
                    a.total += float(rows.double().sum())
                    a.squares += float(rows.double().square().sum())
                    a.low, a.high = min(a.low, float(rows.min())), max(a.high, float(rows.max()))
                    top = rows.amax(0)
                    a.unit_max = top if a.unit_max is None else torch.maximum(a.unit_max, top)
                    near = _near_bound(rows, kind, module, threshold, margin)
                    if near is not None:
                        count = near.sum(0)
                        a.near = count if a.near is None else a.near + count
                    a.rows += rows.shape[0]
                    if pooled:
                        a.pooled.append(_pooled(t, mask).cpu())
    finally:
        model.train(was_training)
    if not acc:
        raise DataError("no inputs were read: pass a batch (a tensor or a dict of model arguments) or an iterable "
                        "of batches")
    return acc


def _stats_rows(acc: dict[str, _Accumulator], share: float) -> list[dict[str, Any]]:
    rows = []
    for name, a in acc.items():
        mean = a.total / a.n
        var = max(a.squares / a.n - mean * mean, 0.0) * a.n / max(a.n - 1, 1)
        kind = a.kind or ("nonnegative" if a.low >= 0 else None)
        dead = float((a.unit_max <= 0).double().mean()) if kind in _RELU_FAMILY else None
        saturated = float((a.near >= share * a.rows).double().mean()) if a.near is not None else None
        rows.append({"layer": name, "shape": "x".join(map(str, a.shape)), "units": int(a.unit_max.numel()),
                     "activation": kind or "-", "mean": mean, "std": math.sqrt(var), "min": a.low, "max": a.high,
                     "dead": dead, "saturated": saturated})
    return rows


def activation_stats(model: nn.Module, inputs_or_batches: Any, layers: str | Sequence[str] | None = None, *,
                     threshold: float | None = None, margin: float = 0.01, share: float = 0.95
                     ) -> list[dict[str, Any]]:
    """Per-layer activation statistics over a batch (a tensor, or a dict of model arguments with an
    ``attention_mask`` whose padding is skipped) or an iterable of batches: ``[{"layer", "shape" (per example),
    "units", "activation", "mean", "std", "min", "max", "dead", "saturated"}]``.

    A unit is a channel of a feature map, else a feature of the last axis. ``dead``: the fraction of units never
    > 0 over every example and position, for ReLU-family outputs (a ReLU / ReLU6 module's output, or a layer
    whose outputs are all >= 0); None for other layers. ``saturated``: the fraction of units within ``margin`` (a
    share of the range) of the activation's bound (tanh, sigmoid, softsign, hardtanh, hardsigmoid: either bound;
    ReLU6: 6) on at least ``share`` of their values; for unbounded outputs |x| > ``threshold`` when given, else
    None. ``layers``: None (the contract's layers, see the module doc), module names, or ``"activations"``.

    >>> import torch
    >>> from bigmodels.testing import tiny_model
    >>> rows = activation_stats(tiny_model("resnet18").eval(), torch.randn(4, 3, 32, 32))
    >>> [r["layer"] for r in rows][:2], rows[0]["activation"]
    (['intermediates[0]', 'intermediates[1]'], 'relu')
    """
    if not 0 < share <= 1 or not 0 <= margin < 0.5:
        raise ConfigError(f"share={share} must be in (0, 1] and margin={margin} in [0, 0.5)")
    return _stats_rows(_read(model, inputs_or_batches, layers, pooled=False, threshold=threshold, margin=margin),
                       share)


def layer_representations(model: nn.Module, inputs: Any, layers: str | Sequence[str] | None = None
                          ) -> dict[str, torch.Tensor]:
    """Each layer's representation of every example, mean-pooled over tokens (padding skipped) or spatial
    positions: ``{layer name: (N, D)}``."""
    acc = _read(model, inputs, layers, pooled=True)
    return {name: torch.cat(a.pooled) for name, a in acc.items() if a.pooled}


# ---------------------------------------------------------------------------------------------- projections, probes


def _labels(labels: Any, n: int) -> torch.Tensor:
    y = torch.as_tensor(labels).reshape(-1)
    if len(y) != n or y.is_floating_point():
        raise DataError(f"labels must be {n} class indices, one per example, got {y.dtype} of length {len(y)}")
    return y.long()


@dataclass
class Projections:
    """2-D PCA projections per layer: ``points[layer]`` (N, 2), ``explained[layer]`` the share of the variance
    the two components keep, ``labels`` (N,), and the plot grid as PNG bytes."""

    points: dict[str, torch.Tensor]
    explained: dict[str, float]
    labels: torch.Tensor
    png: bytes


def _pca(z: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(N, D) -> ((N, 2) principal coordinates, the share of variance they explain); zeros where N or D < 2."""
    from sklearn.decomposition import PCA

    n, d = z.shape
    k = min(2, n, d)
    out = torch.zeros(n, 2)
    if k < 1 or float(z.var(0).sum()) == 0.0:
        return out, 0.0
    pca = PCA(n_components=k, random_state=0).fit(z.double().numpy())
    out[:, :k] = torch.from_numpy(pca.transform(z.double().numpy())).float()
    return out, float(pca.explained_variance_ratio_.sum())


def _plot(points: dict[str, torch.Tensor], explained: dict[str, float], y: torch.Tensor,
          class_names: Sequence[str] | None, dpi: int) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    cols = min(4, len(points))
    rows = -(-len(points) // cols)
    fig = Figure(figsize=(3 * cols, 3 * rows), dpi=dpi)
    axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
    classes = sorted(set(y.tolist()))
    cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
    for ax, (name, p) in zip(axes, points.items(), strict=False):
        for i, c in enumerate(classes):
            sel = y == c
            label = class_names[c] if class_names is not None and 0 <= c < len(class_names) else str(c)
            ax.scatter(p[sel, 0].numpy(), p[sel, 1].numpy(), s=6, color=cmap(i % cmap.N), label=label)
        ax.set_title(f"{name} ({100 * explained[name]:.0f}% var)", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(points):]:
        ax.set_axis_off()
    if len(classes) <= 20:
        axes[0].legend(fontsize=6, markerscale=2, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _projections(reps: dict[str, torch.Tensor], y: torch.Tensor, class_names: Sequence[str] | None,
                 dpi: int = 80) -> Projections:
    points, explained = {}, {}
    for name, z in reps.items():
        points[name], explained[name] = _pca(z)
    return Projections(points, explained, y, _plot(points, explained, y, class_names, dpi))


def layer_projections(model: nn.Module, inputs: Any, labels: Any, layers: str | Sequence[str] | None = None, *,
                      class_names: Sequence[str] | None = None, path: str | None = None) -> Projections:
    """2-D PCA projections of each layer's (pooled) representation, coloured by label, as one PNG grid (written
    to ``path`` when given).

    >>> import torch
    >>> from bigmodels.testing import tiny_model
    >>> p = layer_projections(tiny_model("cnn_small"), torch.randn(20, 1, 8, 8), torch.arange(20) % 2)
    >>> next(iter(p.points.values())).shape, p.png[:4]
    (torch.Size([20, 2]), b'\\x89PNG')
    """
    reps = layer_representations(model, inputs, layers)
    out = _projections(reps, _labels(labels, len(next(iter(reps.values())))), class_names)
    if path is not None:
        from pathlib import Path

        Path(path).write_bytes(out.png)
    return out


def _probes(reps: dict[str, torch.Tensor], y: torch.Tensor, test_fraction: float, seed: int) -> list[dict[str, Any]]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction={test_fraction} must be in (0, 1), e.g. 0.25")
    counts = torch.bincount(y)
    classes = int((counts > 0).sum())
    n_test = math.ceil(test_fraction * len(y))
    if classes < 2 or len(y) - n_test < classes or n_test < classes:
        raise DataError(f"a probe needs at least two classes and enough examples for a train and a test split of "
                        f"each: got {len(y)} examples of {classes} classes; give more labelled examples")
    stratify = y.numpy() if int(counts[counts > 0].min()) >= 2 else None
    index = torch.arange(len(y)).numpy()
    train, test = train_test_split(index, test_size=n_test, random_state=seed, stratify=stratify)
    chance = float(torch.bincount(y[test]).max()) / len(test)  # the majority class of the test split
    rows = []
    for name, z in reps.items():
        x = z.double().numpy()
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        probe.fit(x[train], y[train].numpy())
        rows.append({"layer": name, "dim": int(z.shape[1]), "train_accuracy": float(probe.score(x[train], y[train])),
                     "test_accuracy": float(probe.score(x[test], y[test])), "chance": chance})
    return rows


def linear_probes(model: nn.Module, inputs: Any, labels: Any, layers: str | Sequence[str] | None = None, *,
                  test_fraction: float = 0.25, seed: int = 0) -> list[dict[str, Any]]:
    """A logistic-regression probe per layer on its (pooled, standardised) representation, trained on a fixed,
    stratified ``1 - test_fraction`` of the examples (``seed``) and scored on the rest: ``[{"layer", "dim",
    "train_accuracy", "test_accuracy", "chance" (the test split's majority-class share)}]``.

    >>> import torch
    >>> from bigmodels.testing import tiny_model
    >>> rows = linear_probes(tiny_model("mlp_small"), torch.randn(40, 1, 8, 8), torch.arange(40) % 2)
    >>> sorted(rows[0])
    ['chance', 'dim', 'layer', 'test_accuracy', 'train_accuracy']
    """
    reps = layer_representations(model, inputs, layers)
    return _probes(reps, _labels(labels, len(next(iter(reps.values())))), test_fraction, seed)


def activation_report(model: nn.Module, inputs: Any, labels: Any = None, layers: str | Sequence[str] | None = None,
                      *, class_names: Sequence[str] | None = None, threshold: float | None = None,
                      test_fraction: float = 0.25, seed: int = 0) -> dict[str, Any]:
    """Statistics, and with ``labels`` probes and projections, from one pass over ``inputs``:
    ``{"stats": [...], "probes": [...] | None, "projections": Projections | None}``."""
    acc = _read(model, inputs, layers, pooled=labels is not None, threshold=threshold)
    out: dict[str, Any] = {"stats": _stats_rows(acc, 0.95), "probes": None, "projections": None}
    if labels is not None:
        reps = {name: torch.cat(a.pooled) for name, a in acc.items() if a.pooled}
        y = _labels(labels, len(next(iter(reps.values()))))
        out["probes"] = _probes(reps, y, test_fraction, seed)
        out["projections"] = _projections(reps, y, class_names)
    return out


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    return (items[i:i + size] for i in range(0, len(items), size))


def load_labelled(model: nn.Module, source: str, tokenizer: Any = None, *, limit: int = 512, batch_size: int = 64
                  ) -> tuple[list[Any], torch.Tensor, list[str]]:
    """(batches the model takes, labels (N,), class names) from ``source``: a folder of images with one
    sub-folder per class, a text file of ``label<TAB>text`` lines (with the model's ``tokenizer``), or the name
    of an image data set of :func:`bigmodels.data.build_data` (``digits``). At most ``limit`` examples."""
    from pathlib import Path

    from ..data import DATASETS, ImageFolder, build_data
    from ..models._contract import model_info

    if limit < 2:
        raise ConfigError(f"limit={limit} must be >= 2")
    path = Path(source)
    if path.is_dir():
        from ..infer.pipelines import image_preprocessing, prepare_image

        prep = image_preprocessing(model, model_info(model).meta)
        folder = ImageFolder(path, img_size=prep.size[0], channels=prep.channels)
        samples = folder.samples[:: max(1, -(-len(folder.samples) // limit))][:limit]  # every class kept
        batches = [prep.transform(torch.stack([prepare_image(p, prep) for p, _ in chunk])).float()
                   for chunk in _chunks(samples, batch_size)]
        return batches, torch.tensor([label for _, label in samples]), list(folder.class_names)
    if path.is_file():
        return _labelled_texts(model, path, tokenizer, limit, batch_size)
    if source in DATASETS:
        bundle = build_data(source)
        if bundle.task != "image_classification" or not hasattr(bundle.val, "get_batch"):
            raise ConfigError(f"data set {source!r} is not an embedded image data set; give a folder of images "
                              "(one sub-folder per class) or a file of label<TAB>text lines")
        split = bundle.test if bundle.test is not None else bundle.val
        index = torch.arange(min(limit, len(split)))
        images, labels = split.get_batch(index)
        x = bundle.eval_transform(images).float()
        channels = getattr(model.config, "in_chans", x.shape[1])
        if x.shape[1] != channels:
            raise DataError(f"data set {source!r} has {x.shape[1]}-channel images but the model takes {channels}; "
                            "give images the model was built for")
        return list(x.split(batch_size)), labels, list(bundle.meta.get("class_names") or [])
    raise DataError(f"{source!r} is neither a folder of images, a file of label<TAB>text lines, nor a data set "
                    f"name ({', '.join(DATASETS)})")


def _labelled_texts(model: nn.Module, path: Any, tokenizer: Any, limit: int, batch_size: int
                    ) -> tuple[list[Any], torch.Tensor, list[str]]:
    import inspect

    if tokenizer is None:
        raise ConfigError(f"reading the texts of {path} needs the model's tokenizer: pass --tokenizer (a file or "
                          "directory), or save the model with its tokenizer")
    if isinstance(tokenizer, str):
        from ..io import load_tokenizer

        tokenizer = load_tokenizer(tokenizer)
    pairs = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        label, tab, text = line.partition("\t")
        if not tab or not text.strip():
            raise DataError(f"{path}:{n}: expected 'label<TAB>text', got {line[:60]!r}")
        pairs.append((label.strip(), text))
    pairs = pairs[:limit]
    names = sorted({lab for lab, _ in pairs}, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
    y = torch.tensor([names.index(lab) for lab, _ in pairs])
    cfg = model.config
    limit_tokens = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "block_size", None)
    params = inspect.signature(model.forward).parameters
    first = next(iter(params))
    size = batch_size if "attention_mask" in params else 1  # a model without a mask reads unpadded texts
    batches = []
    for chunk in _chunks([t for _, t in pairs], size):
        enc = tokenizer.encode_batch(list(chunk), max_length=limit_tokens, truncation=True)
        batch = {first: enc["input_ids"]}
        if "attention_mask" in params:
            batch["attention_mask"] = enc["attention_mask"]
        batches.append(batch)
    return batches, y, names
