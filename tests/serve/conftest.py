"""Fixtures of the server's tests: the tokenizers, one thread for torch."""

from __future__ import annotations

import pytest
import torch

from bigmodels.data.tokenizers import Tokenizer
from bigmodels.testing import wordpiece_tokenizer

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")

from serve_models import WORDS  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from threads; on a busy 2-core machine OpenMP threads thrash."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def chars() -> Tokenizer:
    return Tokenizer.train_chars("the quick brown fox jumps over the lazy dog. THE END!")


@pytest.fixture(scope="session")
def wordpiece(tmp_path_factory) -> Tokenizer:
    return wordpiece_tokenizer(WORDS, tmp_path_factory.mktemp("wordpiece"))
