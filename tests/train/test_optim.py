"""Optimizer parameter groups, optimizer construction and learning-rate schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bigmodels import create_model
from bigmodels.config import OptimConfig, SchedConfig
from bigmodels.train.optim import build_optimizer, build_scheduler, lr_lambda, param_groups


class Toy(nn.Module):
    """One of each kind of parameter, an embedding tied to the output layer and a frozen matrix."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.conv = nn.Conv2d(1, 2, 3)
        self.lin = nn.Linear(4, 4)
        self.ln = nn.LayerNorm(4)
        self.bn = nn.BatchNorm1d(4)
        self.out = nn.Linear(4, 10, bias=False)
        self.out.weight = self.embed.weight  # tied: one (10, 4) table
        self.frozen = nn.Linear(4, 4)
        self.frozen.weight.requires_grad_(False)


def ids(params) -> set[int]:
    return {id(p) for p in params}


def test_param_groups_split_decay_and_no_decay():
    m = Toy()
    decay, no_decay = param_groups(m, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert ids(decay["params"]) == ids([m.conv.weight, m.lin.weight])
    assert ids(no_decay["params"]) == ids([
        m.embed.weight, m.conv.bias, m.lin.bias, m.ln.weight, m.ln.bias, m.bn.weight, m.bn.bias, m.frozen.bias,
    ])


def test_param_groups_no_duplicates_tied_once_frozen_left_out():
    m = Toy()
    groups = param_groups(m, 0.1)
    everything = [p for g in groups for p in g["params"]]
    assert len(everything) == len(ids(everything))  # no parameter twice
    assert sum(1 for p in everything if p is m.embed.weight) == 1  # the tied table once
    assert all(p is not m.frozen.weight for p in everything)
    assert ids(everything) == ids(p for p in m.parameters() if p.requires_grad)
    torch.optim.AdamW(groups)  # torch itself rejects a parameter in two groups


def test_param_groups_of_a_tied_language_model():
    m = create_model("char_lstm", tie_weights=True, embed_dim=16, hidden_size=16, vocab_size=30, num_layers=1)
    decay, no_decay = param_groups(m, 0.01)
    assert any(p is m.embed.weight for p in no_decay["params"])
    assert not any(p is m.embed.weight for p in decay["params"])
    assert ids(decay["params"]) == ids([m.rnn.weight_ih_l0, m.rnn.weight_hh_l0])
    n = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
    assert n == sum(p.numel() for p in m.parameters())


def test_decay_all_puts_everything_in_one_group():
    m = Toy()
    groups = param_groups(m, 0.1, decay_all=True)
    assert len(groups) == 1
    assert groups[0]["weight_decay"] == 0.1
    assert ids(groups[0]["params"]) == ids(p for p in m.parameters() if p.requires_grad)
    assert len(groups[0]["params"]) == 10  # 11 parameters: the tied table once, the frozen matrix not


def test_zero_weight_decay_is_one_group():
    groups = param_groups(Toy(), 0.0)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.0


# ------------------------------------------------------------------------------------------ optimizers


def test_build_sgd_momentum_nesterov():
    m = Toy()
    opt = build_optimizer(m, OptimConfig(name="sgd", lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-4))
    assert type(opt) is torch.optim.SGD
    assert opt.defaults["nesterov"] is True and opt.defaults["momentum"] == 0.8
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0]
    assert all(g["lr"] == 0.05 and g["nesterov"] for g in opt.param_groups)
    plain = build_optimizer(m, OptimConfig(name="sgd", lr=0.05))
    assert plain.defaults["nesterov"] is False and plain.defaults["momentum"] == 0.9


def test_build_adam():
    opt = build_optimizer(Toy(), OptimConfig(name="adam", lr=3e-4, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.01))
    assert type(opt) is torch.optim.Adam
    assert opt.defaults["lr"] == 3e-4 and opt.defaults["betas"] == (0.8, 0.95) and opt.defaults["eps"] == 1e-6
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]


def test_build_adamw_weight_decay_per_group():
    m = Toy()
    opt = build_optimizer(m, OptimConfig(name="adamw", lr=1e-3, weight_decay=0.05))
    assert type(opt) is torch.optim.AdamW
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    decayed = ids(opt.param_groups[0]["params"])
    assert id(m.lin.weight) in decayed and id(m.lin.bias) not in decayed
    # decoupled decay: with zero gradients only the decay group moves
    before_w, before_b = m.lin.weight.detach().clone(), m.lin.bias.detach().clone()
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.allclose(m.lin.weight, before_w * (1 - 1e-3 * 0.05))
    assert torch.equal(m.lin.bias, before_b)


def test_build_adamw_decay_all():
    opt = build_optimizer(Toy(), OptimConfig(name="adamw", weight_decay=0.05, decay_all=True))
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 0.05


# ------------------------------------------------------------------------------------------ schedules


def sched(**kw) -> SchedConfig:
    return SchedConfig(**kw)


def test_warmup_is_linear_from_one_over_warmup_to_one():
    f = lr_lambda(sched(name="constant", warmup_steps=4), total_steps=100)
    assert [f(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_constant_stays_one():
    f = lr_lambda(sched(name="constant"), total_steps=10)
    assert all(f(s) == 1.0 for s in (0, 1, 5, 10, 1000))


def test_cosine_values_and_floor():
    f = lr_lambda(sched(name="cosine", warmup_steps=10, min_lr_ratio=0.1), total_steps=110)
    assert f(0) == pytest.approx(0.1)  # warmup: 1/10
    assert f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)  # cosine starts at the peak
    assert f(35) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25)))
    assert f(60) == pytest.approx(0.55)  # halfway: floor + half the range
    assert f(110) == pytest.approx(0.1)  # ends at min_lr_ratio
    assert f(500) == pytest.approx(0.1)  # and stays there
    values = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_cosine_default_floor_is_zero():
    f = lr_lambda(sched(name="cosine"), total_steps=100)
    assert f(0) == 1.0 and f(100) == pytest.approx(0.0, abs=1e-12)


def test_linear_values_and_floor():
    f = lr_lambda(sched(name="linear", min_lr_ratio=0.2), total_steps=100)
    assert f(0) == pytest.approx(1.0)
    assert f(25) == pytest.approx(0.2 + 0.8 * 0.75)
    assert f(50) == pytest.approx(0.6)
    assert f(100) == pytest.approx(0.2)
    assert f(150) == pytest.approx(0.2)
    g = lr_lambda(sched(name="linear", warmup_steps=20), total_steps=120)
    assert g(19) == pytest.approx(1.0) and g(70) == pytest.approx(0.5) and g(120) == pytest.approx(0.0)


def test_step_multiplies_by_gamma_every_step_size():
    f = lr_lambda(sched(name="step", step_size=10, gamma=0.5, warmup_steps=5), total_steps=1000)
    assert f(0) == pytest.approx(0.2)
    assert f(5) == 1.0 and f(14) == 1.0
    assert f(15) == 0.5 and f(24) == 0.5
    assert f(25) == 0.25 and f(35) == 0.125
    assert f(5 + 10 * 7) == pytest.approx(0.5**7)


def test_build_scheduler_drives_the_optimizer_lr():
    m = nn.Linear(2, 2)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    scheduler = build_scheduler(opt, sched(name="linear", warmup_steps=2, min_lr_ratio=0.0), total_steps=6)
    lrs = []
    for _ in range(7):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    expected = [0.05, 0.1, 0.1, 0.075, 0.05, 0.025, 0.0]
    assert lrs == pytest.approx(expected)
    # the schedule's position is its whole state: a fresh scheduler restored from it continues the curve
    state = scheduler.state_dict()
    opt2 = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    s2 = build_scheduler(opt2, sched(name="linear", warmup_steps=2, min_lr_ratio=0.0), total_steps=6)
    s2.load_state_dict(state)
    assert s2.last_epoch == scheduler.last_epoch == 7
