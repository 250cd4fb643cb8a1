"""Fixtures of the server's tests: the tokenizers, one thread for torch."""

from __future__ import annotations

import pytest
import torch

from bigmodels.data.tokenizers import Tokenizer

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
    letters = sorted(set("".join(WORDS)))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *letters, *(f"##{c}" for c in letters)]
    path = tmp_path_factory.mktemp("wordpiece") / "vocab.txt"
    path.write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    return Tokenizer.from_vocab(path)
