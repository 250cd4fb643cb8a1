"""Trainer callbacks: the events, their order and arguments, stopping from a callback, the time budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from train.test_train import make_cfg

from bigmodels.errors import ConfigError
from bigmodels.train import STOP_REASONS, Callback, TimeBudget, Trainer


class Recorder(Callback):
    """Records (event, trainer.step, argument) for every event, in the order they come."""

    def __init__(self, events: list, tag: str = "") -> None:
        self.events, self.tag = events, tag

    def on_train_start(self, trainer):
        self.events.append((self.tag + "start", trainer.step, None))

    def on_step_end(self, trainer):
        self.events.append((self.tag + "step", trainer.step, None))

    def on_evaluate(self, trainer, metrics):
        self.events.append((self.tag + "evaluate", trainer.step, metrics))

    def on_save(self, trainer, path):
        assert path.is_dir() and (path / "trainer_state.pt").is_file()  # written before the event
        self.events.append((self.tag + "save", trainer.step, path))

    def on_train_end(self, trainer, summary):
        self.events.append((self.tag + "end", trainer.step, summary))


def test_events_come_in_order_with_their_arguments(tmp_path):
    events: list = []
    with Trainer(make_cfg(tmp_path, "model=mlp_small", "train.steps=4", "train.eval_every=2"),
                 callbacks=[Recorder(events)]) as t:
        summary = t.fit()
    assert [(name, step) for name, step, _ in events] == [
        ("start", 0), ("step", 1), ("step", 2), ("evaluate", 2), ("save", 2),
        ("step", 3), ("step", 4), ("evaluate", 4), ("save", 4), ("end", 4),
    ]
    val = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").open()) if r["split"] == "val"]
    metrics = [arg for name, _, arg in events if name == "evaluate"]
    assert metrics == [{k: v for k, v in r.items() if k not in ("step", "epoch", "split")} for r in val]
    assert {"loss", "accuracy"} <= set(metrics[0])
    saved = [arg for name, _, arg in events if name == "save"]
    assert saved == [tmp_path / "checkpoints" / "step_00000002", tmp_path / "checkpoints" / "step_00000004"]
    assert events[-1][2] is summary and summary["status"] == "completed"


def test_callbacks_run_in_the_order_given_after_the_time_budget(tmp_path):
    events: list = []
    cfg = make_cfg(tmp_path, "model=mlp_small", "train.steps=1", "train.max_time=1000")
    with Trainer(cfg, callbacks=[Recorder(events, "a."), Recorder(events, "b.")]) as t:
        assert isinstance(t.callbacks[0], TimeBudget) and t.callbacks[0].seconds == 1000
        t.fit()
    names = [name for name, _, _ in events]
    assert names == ["a.start", "b.start", "a.step", "b.step", "a.evaluate", "b.evaluate", "a.save", "b.save",
                     "a.end", "b.end"]


class StopAt(Callback):
    def __init__(self, step: int, reason: str = "stopped") -> None:
        self.step, self.reason = step, reason

    def on_step_end(self, trainer):
        if trainer.step == self.step:
            trainer.request_stop(self.reason)


def test_a_callback_stops_the_run_which_evaluates_saves_and_resumes(tmp_path):
    args = ["model=mlp_small", "train.steps=8", "train.eval_every=5"]
    with Trainer(make_cfg(tmp_path, *args), callbacks=[StopAt(3)]) as t:
        summary = t.fit()
    assert summary["status"] == "stopped" and summary["step"] == 3
    assert summary["val"] is not None  # a final evaluation, as at the end of a run
    assert Path(summary["last_checkpoint"]).name == "step_00000003"
    events: list = []
    with Trainer(make_cfg(tmp_path, *args), callbacks=[Recorder(events)]) as again:
        summary = again.fit()
    assert events[0][:2] == ("start", 3) and events[1][:2] == ("step", 4)  # picks up where it stopped
    assert summary["status"] == "completed" and summary["step"] == 8


def test_an_interrupting_callback_saves_without_a_final_evaluation(tmp_path):
    events: list = []
    cfg = make_cfg(tmp_path, "model=mlp_small", "train.steps=8", "train.eval_every=5")
    with Trainer(cfg, callbacks=[StopAt(2, "interrupted"), Recorder(events)]) as t:
        summary = t.fit()
    assert summary["status"] == "interrupted" and summary["val"] is None
    assert [name for name, _, _ in events] == ["start", "step", "step", "save", "end"]


def test_the_strongest_stop_reason_wins(tmp_path):
    with Trainer(make_cfg(tmp_path, "model=mlp_small", "train.steps=8")) as t:
        t.request_stop("time_limit")
        t.request_stop("stopped")
        assert t._agreed_stop(t._stop_reason) == "time_limit"
        t.request_stop("interrupted")
        assert t._agreed_stop(t._stop_reason) == "interrupted"
        assert t._agreed_stop(None) is None
        with pytest.raises(ConfigError, match="'done' is not one of stopped, time_limit"):
            t.request_stop("done")
    assert STOP_REASONS[-1] == "interrupted"


def test_bad_callbacks_and_budgets_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="Callback instances"):
        Trainer(make_cfg(tmp_path, "model=mlp_small", "train.steps=1"), callbacks=[lambda trainer: None])
    with pytest.raises(ConfigError, match="0 seconds"):
        TimeBudget(0)


def test_time_budget_callback_counts_training_seconds_of_this_fit(tmp_path):
    with Trainer(make_cfg(tmp_path, "model=mlp_small", "train.epochs=1000"), callbacks=[TimeBudget(0.2)]) as t:
        summary = t.fit()
    assert summary["status"] == "time_limit" and 0 < summary["step"] < t.total_steps
    assert summary["train_seconds"] >= 0.2 and summary["val"] is not None
