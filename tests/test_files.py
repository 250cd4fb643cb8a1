"""Atomic writes respect the umask (saved models and checkpoints readable by other users and services)."""

from __future__ import annotations

import os
import stat

import pytest

from bigmodels._files import atomic_dir, atomic_write, current_umask


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_current_umask_reads_without_changing_it(umask_022):
    assert current_umask() == 0o022
    assert current_umask() == 0o022


def test_atomic_write_respects_the_umask(tmp_path, umask_022):
    target = tmp_path / "model.safetensors"
    atomic_write(target, lambda p: p.write_bytes(b"x"))
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # mkstemp alone would leave 0600
    os.umask(0o077)
    private = tmp_path / "private.json"
    atomic_write(private, lambda p: p.write_text("{}"))
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_atomic_dir_respects_the_umask(tmp_path, umask_022):
    target = tmp_path / "step_00000010"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    assert stat.S_IMODE(target.stat().st_mode) == 0o755  # mkdtemp alone would leave 0700
    assert not list(tmp_path.glob(".step_*.tmp"))


def test_a_failed_write_leaves_nothing(tmp_path):
    def fail(p):
        p.write_text("half")
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "x.json", fail)
    assert list(tmp_path.iterdir()) == []
