"""Resuming a run: changed optimizer settings, damaged pointers and step folders, leftovers of a kill."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from train.test_train import make_cfg, weights

from bigmodels.errors import CheckpointError, ConfigError
from bigmodels.train import Trainer

# a constant schedule: a run of 4 steps is the first 4 steps of a run of 6
RUN = ["model=mlp_small", "train.steps=6", "train.eval_every=2", "optim.lr=0.01", "sched.name=constant"]


def _train(out: Path, *overrides: str) -> Trainer:
    with Trainer(make_cfg(out, *RUN, *overrides)) as t:
        t.fit()
    return t


def _train_steps(out: Path) -> list[int]:
    return [r["step"] for r in map(json.loads, (out / "metrics.jsonl").open()) if r["split"] == "train"]


def test_resume_refuses_a_changed_learning_rate_by_name(tmp_path):
    _train(tmp_path, "train.steps=4")
    # the restored optimizer and schedule would keep lr 0.01 while run.json recorded 0.001: refused, by name
    with pytest.raises(ConfigError, match=r"optim\.lr=0\.001.*0\.01.*init="):
        Trainer(make_cfg(tmp_path, *RUN, "optim.lr=0.001"))
    with pytest.raises(ConfigError, match=r"optim\.weight_decay"):
        Trainer(make_cfg(tmp_path, *RUN, "optim.weight_decay=0.1"))
    with Trainer(make_cfg(tmp_path, *RUN)) as same:  # the original settings (and more steps) resume
        assert same.step == 4
        assert same.optimizer.param_groups[0]["lr"] == pytest.approx(same.scheduler.get_last_lr()[0])
        same.fit()
    assert same.step == 6


@pytest.mark.parametrize("damage", ["garbage", "deleted_step", "no_pointer"])
def test_a_broken_latest_pointer_resumes_from_the_newest_complete_checkpoint(tmp_path, damage, caplog):
    straight = _train(tmp_path / "straight")
    out = tmp_path / "run"
    _train(out, "train.steps=4")  # checkpoints of steps 2 and 4
    ckpts = out / "checkpoints"
    if damage == "garbage":
        (ckpts / "latest").write_bytes(b"\x00\xffnot a step\n")
    elif damage == "deleted_step":
        (ckpts / "latest").write_text("step_00000009\n")
    else:
        (ckpts / "latest").unlink()
    before = _train_steps(out)
    with caplog.at_level(logging.WARNING, logger="bigmodels.train"), Trainer(make_cfg(out, *RUN)) as t:
        assert t.step == 4  # not 0: the step folders are never overwritten from scratch
        t.fit()
    assert "step_00000004" in caplog.text and "latest" in caplog.text
    assert before == [1, 2, 3, 4] and _train_steps(out) == list(range(1, 7))  # no duplicated metrics lines
    for k, v in weights(straight.model).items():
        assert torch.equal(weights(t.model)[k], v), k


def test_an_incomplete_newest_step_folder_is_skipped(tmp_path, caplog):
    out = tmp_path / "run"
    _train(out, "train.steps=4", "train.keep_last=3")
    ckpts = out / "checkpoints"
    (ckpts / "step_00000004" / "trainer_state.pt").write_bytes(b"half a file")  # unreadable
    (ckpts / "latest").write_text("garbage\n")
    with caplog.at_level(logging.WARNING, logger="bigmodels.train"), Trainer(make_cfg(out, *RUN)) as t:
        assert t.step == 2
    assert "step_00000002" in caplog.text


def test_no_usable_checkpoint_stops_with_a_clear_error_and_touches_nothing(tmp_path):
    out = tmp_path / "run"
    _train(out, "train.steps=4")
    ckpts = out / "checkpoints"
    for d in ckpts.glob("step_*"):
        (d / "model.safetensors").unlink()
    (ckpts / "latest").write_text("step_00000077\n")
    listing = sorted(p.name for p in ckpts.iterdir())
    metrics = (out / "metrics.jsonl").read_text()
    with pytest.raises(CheckpointError, match=r"no complete checkpoint.*step_00000002.*train\.out_dir"):
        Trainer(make_cfg(out, *RUN))
    assert sorted(p.name for p in ckpts.iterdir()) == listing and (out / "metrics.jsonl").read_text() == metrics


def test_half_written_temporary_folders_of_this_run_are_removed_at_the_next_start(tmp_path):
    out = tmp_path / "run"
    _train(out, "train.steps=2")
    ckpts = out / "checkpoints"
    half = ckpts / ".step_00000004.k3j2.tmp"
    half.mkdir()
    (half / "config.json").write_text("{}")
    (ckpts / ".latest.x8f1.tmp").write_text("step_0000")
    elsewhere = out / ".step_00000004.abcd.tmp"  # not this run's checkpoints folder: left alone
    elsewhere.mkdir()
    shutil.copytree(ckpts / "step_00000002", out / "copy_of_step_2")
    with Trainer(make_cfg(out, *RUN)) as t:
        assert t.step == 2
        assert not half.exists() and not (ckpts / ".latest.x8f1.tmp").exists()
        assert elsewhere.is_dir() and (out / "copy_of_step_2").is_dir()


def test_a_trainer_state_pickle_with_more_than_tensors_is_refused_without_unsafe_advice(tmp_path):
    import argparse

    from bigmodels.train.checkpoint import STATE_FILE, CheckpointManager

    torch.save({"step": 3, "payload": argparse.Namespace(x=1)}, tmp_path / STATE_FILE)
    with pytest.raises(CheckpointError) as err:
        CheckpointManager.load_state(tmp_path)
    message = str(err.value)
    assert "was refused" in message and "safetensors" in message
    assert "weights_only=False" not in message
