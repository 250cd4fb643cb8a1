"""Models stay pure (DESIGN.md): one computation through the same submodules in every grad mode.

For every registered model (at its tiny size, eval mode): the nn.Linear and conv modules whose forward hooks fire
are the same under torch.no_grad(), torch.inference_mode() and with grad enabled, and a replaced projection
changes the output in all three modes (a LoRA, quantized or pruned layer must never be skipped at inference).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
import torch
from torch import nn

from bigmodels.models._contract import call, example_inputs
from bigmodels.registry import list_models
from bigmodels.testing import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
MODES: dict[str, Callable[[], contextlib.AbstractContextManager]] = {
    "grad": torch.enable_grad,
    "no_grad": torch.no_grad,
    "inference_mode": torch.inference_mode,
}


def build(name: str) -> nn.Module:
    """The tiny model with every parameter moved off its initial value: zero-initialised classifiers and
    residual gains would otherwise hide a changed projection behind a constant output."""
    torch.manual_seed(0)
    model = tiny_model(name).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g).to(p.dtype))
    return model


def flat(out) -> torch.Tensor:
    """One flat float tensor of every tensor in a model's output (a tensor, a tuple or a dict of them)."""
    if isinstance(out, torch.Tensor):
        return out.detach().float().flatten()
    items = out.values() if isinstance(out, dict) else out
    return torch.cat([flat(t) for t in items if isinstance(t, (torch.Tensor, tuple, list, dict))])


def run(model: nn.Module, x, mode: str) -> torch.Tensor:
    with MODES[mode]():
        return flat(call(model, x)).clone()


def fired_layers(model: nn.Module, x, mode: str) -> set[str]:
    fired: set[str] = set()
    handles = [m.register_forward_hook(lambda mod, i, o, name=name: fired.add(name))
               for name, m in model.named_modules() if isinstance(m, LAYERS)]
    try:
        run(model, x, mode)
    finally:
        for h in handles:
            h.remove()
    return fired


def first_projection(model: nn.Module) -> str:
    """The first attention q_proj where the model has one, else its first nn.Linear."""
    names = [name for name, m in model.named_modules() if type(m) is nn.Linear]
    return next((n for n in names if n.endswith("q_proj")), names[0])


@pytest.mark.parametrize("name", list_models())
def test_the_same_layers_run_in_every_grad_mode(name):
    model = build(name)
    x = example_inputs(model)
    fired = {mode: fired_layers(model, x, mode) for mode in MODES}
    assert fired["grad"], f"{name}: no Linear or conv layer ran"
    assert fired["no_grad"] == fired["grad"], sorted(fired["grad"] ^ fired["no_grad"])
    assert fired["inference_mode"] == fired["grad"], sorted(fired["grad"] ^ fired["inference_mode"])
    outs = {mode: run(model, x, mode) for mode in MODES}
    for mode in ("no_grad", "inference_mode"):
        torch.testing.assert_close(outs[mode], outs["grad"], atol=1e-6, rtol=1e-6)


class LowRankAdapted(nn.Module):
    """base(x) + x A B, LoRA's form (Hu et al. 2021): the base layer's ``weight`` and ``bias`` are unchanged, so a
    model that reads a projection's weights instead of calling it would silently drop the adapter."""

    def __init__(self, base: nn.Linear, rank: int = 2) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.base = base
        self.a = nn.Parameter(torch.randn(base.in_features, rank, generator=g))
        self.b = nn.Parameter(torch.randn(rank, base.out_features, generator=g))
        self.weight, self.bias = base.weight, base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + x @ self.a @ self.b


def replacement(old: nn.Linear, kind: str) -> nn.Module:
    if kind == "adapter":
        return LowRankAdapted(old)
    new = nn.Linear(old.in_features, old.out_features, bias=old.bias is not None)
    with torch.no_grad():
        new.weight.copy_(old.weight + 0.5 * torch.randn(old.weight.shape, generator=torch.Generator().manual_seed(2)))
        if old.bias is not None:
            new.bias.copy_(old.bias)
    return new


@pytest.mark.parametrize("kind", ["new_weights", "adapter"])
@pytest.mark.parametrize("name", list_models())
def test_a_replaced_projection_changes_the_output_in_every_grad_mode(name, kind):
    model = build(name)
    x = example_inputs(model)
    before = {mode: run(model, x, mode) for mode in MODES}
    target = first_projection(model)
    parent, _, child = target.rpartition(".")
    new = replacement(model.get_submodule(target), kind).eval()
    setattr(model.get_submodule(parent) if parent else model, child, new)
    for mode in MODES:
        after = run(model, x, mode)
        change = (after - before[mode]).abs().max().item()
        assert change > 1e-4, f"{name}: replacing {target} ({kind}) left the output unchanged under {mode}"
