"""The crash test: kill training at random points (SIGKILL and SIGINT, several seeds), rerun the same command,
and check that it resumes from the newest complete checkpoint, ends bit-identical to an uninterrupted run, logs
every step once, and leaves no temporary folder behind.

A kill point is (signal, step, where): ``step_end`` (between two steps), ``mid_step`` (inside the forward pass of
the step's second micro-batch) or ``in_save`` (while the checkpoint of that step is being written: its model
files are there, its trainer state is not). SIGKILL loses everything after the last complete checkpoint; SIGINT
finishes the step, saves it and exits. ``CRASH_SEEDS`` kill points per signal run in CI (about 2-3 s each).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train.test_train import FAST, RESUME, make_cfg, weights

from bigmodels.train import Trainer

# the killed runs are subprocesses with OMP_NUM_THREADS=1; the in-process runs must use one thread too, or a
# different reduction order makes "bit-identical" depend on the machine's core count
pytestmark = pytest.mark.usefixtures("one_thread")

CRASH_SEEDS = 3  # kill points per signal in CI; raise it for a longer soak
STEPS, EVAL_EVERY = 12, 4  # from RESUME: checkpoints at steps 4, 8 and 12
WHERE = ("step_end", "mid_step", "in_save")

_KILLED_RUN = """
import os, signal, sys
import torch
from bigmodels.config import resolve_run_config
from bigmodels.train import Callback, Trainer

sig, at, where = getattr(signal, sys.argv[1]), int(sys.argv[2]), sys.argv[3]
trainer = None

class KillAtStepEnd(Callback):
    def on_step_end(self, t):
        if where == "step_end" and t.step == at:
            os.kill(os.getpid(), sig)

real_save, real_loss, micro = torch.save, None, [0]

def save_then_kill(obj, f, *a, **k):  # the trainer state is written after the model files
    if where == "in_save" and trainer.step == at and str(f).endswith("trainer_state.pt"):
        os.kill(os.getpid(), sig)
    return real_save(obj, f, *a, **k)

torch.save = save_then_kill
trainer = Trainer(resolve_run_config(None, sys.argv[4:]), callbacks=[KillAtStepEnd()])
real_loss = trainer.task.loss

def loss_then_kill(model, x, y):  # the 2nd micro-batch of step `at` (trainer.step counts finished steps)
    if where == "mid_step" and trainer.step == at - 1 and model.training:
        micro[0] += 1
        if micro[0] == 2:
            os.kill(os.getpid(), sig)
    return real_loss(model, x, y)

trainer.task.loss = loss_then_kill
print(trainer.fit()["status"])
"""


def kill_points() -> list[tuple[str, int, str]]:
    """CRASH_SEEDS kill points per signal, (signal name, step, where): the places in turn, a seeded random step."""
    points = []
    for sig in ("SIGKILL", "SIGINT"):
        for seed in range(CRASH_SEEDS):
            rng = random.Random(f"{sig}-{seed}")
            where = WHERE[seed % len(WHERE)]
            at = rng.choice(range(EVAL_EVERY, STEPS, EVAL_EVERY)) if where == "in_save" else rng.randint(1, STEPS - 1)
            points.append((sig, at, where))
    return points


def expected_resume_step(sig: str, at: int, where: str) -> int:
    """SIGINT: the step it arrived in is finished and saved. SIGKILL: the last checkpoint completed before it."""
    if sig == "SIGINT":
        return at
    return max((s for s in range(EVAL_EVERY, STEPS, EVAL_EVERY) if s < at), default=0)


def leftovers(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*.tmp"))


def test_random_kills_resume_bit_identical_to_an_uninterrupted_run(tmp_path):
    with Trainer(make_cfg(tmp_path / "straight", *RESUME)) as straight:
        straight.fit()
    reference = weights(straight.model)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    counts = {"runs": 0, "SIGKILL": 0, "SIGINT": 0, "identical": 0, "temp_left_by_kill": 0}
    for i, (sig, at, where) in enumerate(kill_points()):
        out = tmp_path / f"run{i}"
        killed = subprocess.run(
            [sys.executable, "-c", _KILLED_RUN, sig, str(at), where, *FAST, f"train.out_dir={out}", *RESUME],
            env=env, capture_output=True, text=True, timeout=300)
        counts["runs"] += 1
        point = f"{sig} at step {at} ({where})"
        if sig == "SIGKILL":
            assert killed.returncode == -signal.SIGKILL, f"{point}: {killed.stderr[-2000:]}"
        else:
            assert (killed.returncode, killed.stdout.strip()) == (0, "interrupted"), f"{point}: {killed.stderr[-2000:]}"
        counts[sig] += 1
        if sig == "SIGKILL" and where == "in_save":  # the half-written checkpoint folder is there ...
            assert leftovers(out), point
            counts["temp_left_by_kill"] += 1
        with Trainer(make_cfg(out, *RESUME)) as again:  # the same command again
            assert again.step == expected_resume_step(sig, at, where), point
            assert leftovers(out) == [], point  # ... and gone once the rerun starts
            assert again.fit()["status"] == "completed", point
        for k, v in reference.items():
            assert torch.equal(weights(again.model)[k], v), f"{point}: {k} differs"
        train_steps = [r["step"] for r in map(json.loads, (out / "metrics.jsonl").open()) if r["split"] == "train"]
        assert train_steps == list(range(1, STEPS + 1)), point  # every step logged once, none lost or doubled
        assert leftovers(out) == [], point
        counts["identical"] += 1
    print(f"crash test: {counts}")
    assert counts == {**counts, "runs": 2 * CRASH_SEEDS, "SIGKILL": CRASH_SEEDS, "SIGINT": CRASH_SEEDS,
                      "identical": 2 * CRASH_SEEDS}


def test_the_kill_points_cover_every_place_and_signal():
    points = kill_points()
    assert len(points) == 2 * CRASH_SEEDS and len(set(points)) == len(points)
    if CRASH_SEEDS >= len(WHERE):
        assert {(sig, where) for sig, _, where in points} == {(s, w) for s in ("SIGKILL", "SIGINT") for w in WHERE}
    assert all(1 <= at < STEPS for _, at, _ in points)
