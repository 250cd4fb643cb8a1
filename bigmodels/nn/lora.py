"""LoRA: low-rank adapters on chosen Linear layers (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large
Language Models"), an in-place transform on any module (as :func:`~bigmodels.nn.attention.pack_qkv_`, it knows no
model). ``bigmodels.compress.lora`` re-exports it and adds saving and loading the adapters alone.

A frozen weight W (out, in) gains a trainable update ``(alpha / r) * B @ A`` with A (r, in) and B (out, r),
B initialised to zero (sec. 4.1), so the adapted model starts as the base model. Only the adapters (and the
modules named in ``train_modules``, e.g. a new classifier) train. The adapters save alone (a small safetensors
file with their config), load onto the same base, and merge back into plain Linear weights.

    >>> import torch, bigmodels
    >>> model = bigmodels.create_model("mlp_small")
    >>> report = add_lora_(model, targets=["layers.0"], rank=4)
    >>> report.wrapped, report.trainable < report.total
    (['mlp.layers.0'], True)
    >>> x = torch.randn(2, 1, 8, 8)
    >>> before = model(x)
    >>> merge_lora_(model)
    1
    >>> torch.allclose(model(x), before)
    True

Modules are matched by their dotted names (``model.named_modules()``): a pattern matches a name when it matches
the whole name or its last components (``q_proj`` matches ``layers.0.attn.q_proj``), with ``*`` and ``?``
wildcards (fnmatch).
"""

from __future__ import annotations

import copy
import fnmatch
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError

__all__ = [
    "LoRALinear", "LoRAReport", "add_lora_", "merge_lora_", "lora_modules",
    "lora_state_dict", "merged_copy", "load_merged_state_dict_",
]

log = logging.getLogger("bigmodels.compress")


class LoRALinear(nn.Module):
    """``y = x W^T + b + (alpha / r) * dropout(x) A^T B^T``: a Linear with a low-rank update.

    ``weight`` and ``bias`` are the wrapped Linear's own parameters (same objects: ties survive, and the state
    dict keeps the Linear's names beside ``lora_A`` / ``lora_B``).

    >>> lin = LoRALinear(nn.Linear(8, 4), rank=2)
    >>> x = torch.randn(3, 8)
    >>> torch.equal(lin(x), F.linear(x, lin.weight, lin.bias))  # B starts at zero
    True
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float = 16.0, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(rank, int) or rank < 1:
            raise ConfigError(f"LoRA rank={rank!r} must be a whole number >= 1, e.g. 8")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha, self.scaling = rank, float(alpha), float(alpha) / rank
        self.weight = base.weight  # (out, in), frozen by add_lora_
        self.bias = base.bias
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **factory))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **factory))  # (out, r): starts at zero
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear's weight (and peft's A)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def delta_weight(self) -> torch.Tensor:
        """The update the adapter adds to ``weight``: (alpha / r) B A, (out, in)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)  # (..., r) -> (..., out)
        return F.linear(x, self.weight, self.bias) + update * self.scaling

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"alpha={self.alpha:g}")


@dataclass
class LoRAReport:
    """What :func:`add_lora_` did: the wrapped Linear layers, the fully trained modules, parameter counts."""

    rank: int
    alpha: float
    dropout: float
    targets: list[str]
    train_modules: list[str]
    wrapped: list[str] = field(default_factory=list)
    trainable: int = 0  # parameters that train (adapters + train_modules)
    total: int = 0  # every parameter of the adapted model, adapters included

    @property
    def fraction(self) -> float:
        return self.trainable / max(1, self.total)

    def __str__(self) -> str:
        heads = f" + {', '.join(self.train_modules)} in full" if self.train_modules else ""
        return (f"LoRA r={self.rank} alpha={self.alpha:g} on {len(self.wrapped)} Linear layers{heads}: "
                f"{self.trainable:,} of {self.total:,} parameters trainable ({100 * self.fraction:.2f}%)")


def _matches(name: str, patterns: Sequence[str]) -> bool:
    """``name`` matches a pattern as a whole or by its last components."""
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, f"*.{p}") for p in patterns)


def _set_child(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def lora_modules(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    """(name, module) of every :class:`LoRALinear` in ``model``, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def add_lora_(
    model: nn.Module,
    targets: Sequence[str] = ("*",),
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    *,
    train_modules: Sequence[str] = (),
) -> LoRAReport:
    """Wrap every ``nn.Linear`` of ``model`` whose name matches ``targets`` in a :class:`LoRALinear` and freeze
    all parameters but the adapters and those of ``train_modules`` (modules matched by name, trained in full and
    never wrapped); returns a :class:`LoRAReport`.

    >>> import bigmodels
    >>> model = bigmodels.create_model("mlp_small")
    >>> print(add_lora_(model, targets=["layers.*"], rank=2, train_modules=["fc"]))  # doctest: +ELLIPSIS
    LoRA r=2 alpha=16 on 2 Linear layers + fc in full: ... parameters trainable (...%)
    """
    targets, train_modules = list(targets), list(train_modules)
    if isinstance(targets, str) or not targets:
        raise ConfigError(f"LoRA targets={targets!r} must be a non-empty list of name patterns, e.g. ['q_proj', "
                          "'v_proj'] or ['*']")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ConfigError(f"LoRA rank={rank!r} must be a whole number >= 1, e.g. 8")
    if not (isinstance(alpha, int | float) and math.isfinite(alpha) and alpha > 0):
        raise ConfigError(f"LoRA alpha={alpha!r} must be a number > 0, e.g. 16")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"LoRA dropout={dropout!r} must be in [0, 1), e.g. 0.1")
    if lora_modules(model):
        raise ConfigError("this model already has LoRA adapters; merge them first (merge_lora_) or adapt a fresh "
                          "copy of the base model")
    named = dict(model.named_modules())
    heads = [n for n in named if n and _matches(n, train_modules)]
    missing_heads = [p for p in train_modules if not any(_matches(n, [p]) for n in heads)]
    if missing_heads:
        tops = ", ".join(n for n, _ in model.named_children())
        raise ConfigError(f"LoRA train_modules {missing_heads} match no module of {type(model).__name__}; "
                          f"its top-level modules: {tops}")
    under_head = {n for n in named for h in heads if n == h or n.startswith(h + ".")}
    linears = [n for n, m in named.items() if type(m) is nn.Linear]
    chosen = [n for n in linears if _matches(n, targets) and n not in under_head]
    if not chosen:
        shown = ", ".join(linears[:40]) + (f", ... ({len(linears)} in all)" if len(linears) > 40 else "")
        raise ConfigError(f"LoRA targets {targets} match no Linear layer of {type(model).__name__} (outside "
                          f"train_modules {train_modules}); its Linear layers: {shown or 'none'}")
    model.requires_grad_(False)
    for name in chosen:
        _set_child(model, name, LoRALinear(named[name], rank, alpha, dropout))
    for name in heads:
        named[name].requires_grad_(True)
    report = LoRAReport(rank, float(alpha), float(dropout), targets, train_modules, wrapped=chosen)
    seen: set[int] = set()
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            report.total += p.numel()
            report.trainable += p.numel() if p.requires_grad else 0
    model.lora_report = report  # what save_lora writes beside the adapters; the trainer reads it
    log.info("%s", report)
    return report


def merge_lora_(model: nn.Module) -> int:
    """Fold every adapter into its weight (``W += (alpha / r) B A``) and put plain ``nn.Linear`` layers back;
    returns how many were merged. Parameters keep their ``requires_grad`` (``model.requires_grad_(True)`` trains
    them all again).
    """
    merged = lora_modules(model)
    for name, m in merged:
        linear = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
        with torch.no_grad():
            m.weight.add_(m.delta_weight().to(m.weight.dtype))
        linear.weight, linear.bias = m.weight, m.bias
        _set_child(model, name, linear)
    if hasattr(model, "lora_report"):
        del model.lora_report
    return len(merged)


def merged_copy(model: nn.Module) -> nn.Module:
    """A plain copy of ``model`` with its adapters merged (the model itself is untouched): what a checkpoint
    saves, so that any stage loads it as an ordinary model."""
    report = getattr(model, "lora_report", None)
    try:
        if report is not None:
            del model.lora_report  # not deep-copied: the copy is a plain model
        twin = copy.deepcopy(model)
    finally:
        if report is not None:
            model.lora_report = report
    merge_lora_(twin)
    return twin


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors that train under LoRA: every adapter's A and B and the parameters that require grad."""
    names = {f"{n}.{k}" for n, _ in lora_modules(model) for k in ("lora_A", "lora_B")}
    names |= {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach() for k, v in model.state_dict(keep_vars=True).items() if k in names}


def load_merged_state_dict_(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load the state dict of a plain (merged) model into its LoRA-adapted twin: the weights take the merged
    values and every B restarts at zero, so the model computes what the plain one does."""
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    wrong = [k for k in missing if not k.endswith((".lora_A", ".lora_B"))]
    if wrong or unexpected:
        raise CheckpointError(f"the weights do not fit this LoRA-adapted model: missing {wrong[:5]}, "
                              f"unexpected {list(unexpected)[:5]}; load them into a model of the same config")
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_B.zero_()
