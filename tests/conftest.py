"""Shared fixtures: the real data sets beside the repository, and an in-process CLI runner."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bigmodels.cli import main

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the repository root; tests that need it skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}: the real data sets live in ../shared/data")
    return SHARED_DATA


@pytest.fixture
def run_cli(capsys):
    """``run_cli(args) -> (exit_code, stdout, stderr)`` through ``bigmodels.cli.main`` (argparse exits caught)."""

    def run(args) -> tuple[int, str, str]:
        capsys.readouterr()  # drop whatever an earlier step printed
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse: --help (0) and usage errors (2)
            code = e.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP threads thrash (100x slower);
    a module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
