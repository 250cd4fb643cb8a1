"""Tiny models for the server's tests, a TestClient that shows 500s as answers, a live uvicorn server, and a CSS
colour reader for the browser tests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import torch

import bigmodels
from bigmodels.data.tokenizers import Tokenizer
from bigmodels.testing import tiny_model

WORDS = ("the a dog cat runs sleeps in park paris is capital of france john smith lives berlin and "
         "plays music man guitar someone makes").split()
TEXTS = ["the dog runs in the park", "john smith lives in berlin", "a cat sleeps", "paris is the capital of france",
         "someone makes music"]


def gpt(chars: Tokenizer) -> torch.nn.Module:
    torch.manual_seed(0)
    return tiny_model("gpt2", vocab_size=chars.vocab_size).eval()  # block_size 64


def embedder(wordpiece: Tokenizer) -> torch.nn.Module:
    torch.manual_seed(0)
    return tiny_model("bert-base", vocab_size=wordpiece.vocab_size, head="embedding", normalize=True).eval()


def text_classifier(wordpiece: Tokenizer) -> torch.nn.Module:
    torch.manual_seed(0)
    model = tiny_model("bert-base", vocab_size=wordpiece.vocab_size, head="sequence_classification",
                       num_labels=3).eval()
    model.info.meta["class_names"] = ["negative", "neutral", "positive"]
    return model


def image_classifier() -> torch.nn.Module:
    torch.manual_seed(0)
    model = bigmodels.create_model("cnn_small", num_classes=3, in_chans=1, img_size=8).eval()
    model.info.meta.update(class_names=["zero", "one", "two"], mean=[0.5], std=[0.25], img_size=8)
    return model


def slowed(model: torch.nn.Module, seconds: float) -> torch.nn.Module:
    """``model`` with every forward pass ``seconds`` longer (a hook: the model itself is untouched). A decoder's
    hook goes on its first layer (the token embedding), which every pass runs: greedy steps through the server's
    screened output layer call ``forward_hidden``, not the model's own forward."""
    first = next(model.children()) if hasattr(model, "forward_hidden") else model
    first.register_forward_pre_hook(lambda module, args: time.sleep(seconds))
    return model


def rgba(css: str) -> tuple[int, int, int, float]:
    """A colour as Chromium computes it (``rgb(r, g, b)`` or ``rgba(r, g, b, a)``) -> (r, g, b, alpha)."""
    parts = [float(v) for v in css[css.index("(") + 1 : -1].split(",")]
    return int(parts[0]), int(parts[1]), int(parts[2]), parts[3] if len(parts) == 4 else 1.0


def client(app):
    from fastapi.testclient import TestClient

    return TestClient(app, raise_server_exceptions=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(app, timeout: float = 20.0) -> Iterator[str]:
    """``app`` served by uvicorn on 127.0.0.1 at a free port in a background thread: yields its base URL, and
    shuts it down (and joins the thread) on exit."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning",
                                           lifespan="on", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    start = time.monotonic()
    while not server.started:
        if not thread.is_alive() or time.monotonic() - start > timeout:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        assert not thread.is_alive(), "the test server did not shut down"
