"""Data-parallel strategies: one process, DDP, and the trainer's use of the interface alone."""

from __future__ import annotations

import contextlib
import logging
import socket

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from train.test_train import make_cfg, weights

from bigmodels.errors import TrainingError
from bigmodels.train import DDP, DataParallel, SingleProcess, Trainer, data_parallel
from bigmodels.train import trainer as trainer_module
from bigmodels.train.distributed import LOG_ALL_RANKS_ENV, DistInfo, init_distributed


def test_one_process_trains_the_model_as_it_is():
    strategy = data_parallel(DistInfo(), torch.device("cpu"))
    assert isinstance(strategy, SingleProcess)
    model = torch.nn.Linear(4, 2)
    assert strategy.wrap(model) is model and strategy.unwrap(model) is model
    with strategy.no_sync(model):
        pass
    strategy.teardown()  # no process group: nothing to leave
    assert isinstance(data_parallel(DistInfo(rank=1, world_size=2), torch.device("cpu")), DDP)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed + gloo")
def test_ddp_wraps_unwraps_and_accumulates_locally_under_no_sync(monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        strategy = DDP(DistInfo(), torch.device("cpu"))
        model = torch.nn.Linear(4, 2)
        wrapped = strategy.wrap(model)
        assert isinstance(wrapped, DistributedDataParallel) and strategy.unwrap(wrapped) is model
        x = torch.randn(3, 4)
        with strategy.no_sync(wrapped):
            wrapped(x).sum().backward()
        wrapped(x).sum().backward()  # the reducing pass adds to what no_sync accumulated
        torch.testing.assert_close(model.weight.grad, 2 * x.sum(0).expand(2, 4))
        del wrapped
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(("rank", "log_all", "level"), [(0, "", logging.NOTSET), (1, "", logging.WARNING),
                                                       (1, "1", logging.NOTSET)])
def test_only_rank_0_logs_unless_every_rank_is_asked_to(monkeypatch, rank, log_all, level):
    logger = logging.getLogger("bigmodels")
    saved = logger.level
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv(LOG_ALL_RANKS_ENV, log_all)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)  # a process group as torchrun would have made
    monkeypatch.setattr(dist, "get_rank", lambda: rank)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    logger.setLevel(logging.NOTSET)
    try:
        assert init_distributed("cpu") == DistInfo(rank=rank, world_size=2)
        assert logger.level == level
    finally:
        logger.setLevel(saved)  # setLevel (not an attribute) also clears the loggers' cached levels


class Recording(DataParallel):
    """A strategy that records how the trainer uses it (and trains as one process)."""

    name = "recording"
    calls: list[str] = []

    def wrap(self, model):
        self.calls.append("wrap")
        return model

    def no_sync(self, wrapped):
        self.calls.append("no_sync")
        return contextlib.nullcontext()

    def unwrap(self, wrapped):
        return wrapped

    def teardown(self):
        self.calls.append("teardown")


def test_the_trainer_goes_through_the_strategy(tmp_path, monkeypatch):
    Recording.calls = []
    monkeypatch.setattr(trainer_module, "data_parallel", lambda info, device: Recording(info, device))
    args = ["model=mlp_small", "train.steps=3", "train.grad_accum=3", "data.batch_size=16", "optim.name=sgd"]
    with Trainer(make_cfg(tmp_path / "a", *args)) as t:
        assert t.train_module is t.model
        t.fit()
    assert Recording.calls == ["wrap"] + ["no_sync"] * (3 * 2) + ["teardown"]  # 2 of 3 micro-batches per step
    assert t.train_module is None
    with pytest.raises(TrainingError, match="closed"):
        t.fit()
    monkeypatch.undo()
    with Trainer(make_cfg(tmp_path / "b", *args)) as plain:
        assert isinstance(plain.parallel, SingleProcess)
        plain.fit()
    for k, v in weights(plain.model).items():
        assert torch.equal(weights(t.model)[k], v), k

