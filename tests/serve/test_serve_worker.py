"""``model_process=True`` (``serve --model-process``): the batched endpoints run in a child process that loads the
same model; its answers are the in-process server's, it restarts when it dies, and it stops with the server."""

from __future__ import annotations

import os
import pickle
import signal
import time

import pytest
import torch
from serve_models import TEXTS, client, embedder, text_classifier

import bigmodels
from bigmodels.errors import ConfigError, DataError
from bigmodels.serve import create_app
from bigmodels.serve.worker import _portable


@pytest.fixture(scope="module")
def embedder_dir(wordpiece, tmp_path_factory):
    return bigmodels.save(embedder(wordpiece), tmp_path_factory.mktemp("embedder"), tokenizer=wordpiece)


def _vectors(c, texts) -> torch.Tensor:
    r = c.post("/v1/embeddings", json={"input": texts})
    assert r.status_code == 200, r.text
    return torch.tensor([d["embedding"] for d in r.json()["data"]])


def test_embeddings_from_the_model_process_equal_the_in_process_servers(embedder_dir):
    texts = [*TEXTS, "the dog " * 30]  # one long enough to be truncated
    with client(create_app(embedder_dir)) as c:
        expected = _vectors(c, texts)
    app = create_app(embedder_dir, model_process=True)
    worker = app.state.server.model_process
    assert worker.alive and worker.endpoints == ["/v1/embeddings"] and worker._process.pid != os.getpid()
    with client(app) as c:
        got = _vectors(c, texts)
        registry = app.state.server.metrics.registry
        assert registry.get_sample_value("bigmodels_batch_size_sum", {"endpoint": "/v1/embeddings"}) == len(texts)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert not worker.alive  # the server's shutdown stopped it


def test_a_dead_model_process_is_restarted_by_the_next_batch(embedder_dir):
    app = create_app(embedder_dir, model_process=True)
    worker = app.state.server.model_process
    with client(app) as c:
        first = _vectors(c, TEXTS[:2])
        pid = worker.pid
        assert c.get("/health").json()["model_process"] == {"pid": pid, "alive": True}
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while worker.alive and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not worker.alive and c.get("/health").json()["model_process"] == {"pid": pid, "alive": False}
        torch.testing.assert_close(_vectors(c, TEXTS[:2]), first, rtol=0, atol=1e-6)
        assert worker.alive and worker._process.pid != pid
        assert app.state.server.unexpected_errors == 0


def test_classification_runs_in_the_model_process_with_its_options(wordpiece, tmp_path):
    directory = bigmodels.save(text_classifier(wordpiece), tmp_path / "clf", tokenizer=wordpiece)
    body = {"input": TEXTS[:3], "top_k": 2}
    with client(create_app(directory)) as c:
        expected = c.post("/v1/classify", json=body).json()["data"]
    app = create_app(directory, model_process=True)
    assert app.state.server.model_process.endpoints == ["/v1/classify"]
    with client(app) as c:
        got = c.post("/v1/classify", json=body).json()["data"]
    assert [[x["label"] for x in d["labels"]] for d in got] == [[x["label"] for x in d["labels"]] for d in expected]
    assert all(len(d["labels"]) == 2 for d in got)


def test_model_process_needs_a_path_and_a_generator_needs_none(wordpiece, chars, tmp_path):
    with pytest.raises(ConfigError, match="needs the model's path"):
        create_app(embedder(wordpiece), tokenizer=wordpiece, model_process=True)
    from serve_models import gpt

    directory = bigmodels.save(gpt(chars), tmp_path / "gpt", tokenizer=chars)
    app = create_app(directory, model_process=True)  # completions run in the server's threads: no child
    assert app.state.server.model_process is None


def test_model_process_gets_the_tokenizer_given_to_the_server(wordpiece, tmp_path):
    # a directory saved without its tokenizer, served with tokenizer=: the child must classify with that one too
    directory = bigmodels.save(text_classifier(wordpiece), tmp_path / "clf")
    assert bigmodels.io.saved_tokenizer(directory) is None
    body = {"input": TEXTS[:3], "top_k": 2}
    with client(create_app(directory, tokenizer=wordpiece)) as c:
        expected = c.post("/v1/classify", json=body).json()["data"]
    app = create_app(directory, tokenizer=wordpiece, model_process=True)
    assert app.state.server.model_process.endpoints == ["/v1/classify"]
    with client(app) as c:
        r = c.post("/v1/classify", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["data"] == expected


def test_a_tokenizer_that_cannot_reach_the_model_process_is_refused(wordpiece, tmp_path):
    import copy

    directory = bigmodels.save(text_classifier(wordpiece), tmp_path / "clf")
    tokenizer = copy.copy(wordpiece)
    tokenizer.normalize = lambda text: text  # a lambda: pickle cannot send it to the child
    with pytest.raises(ConfigError, match="cannot be sent to the model process.*save it beside the model"):
        create_app(directory, tokenizer=tokenizer, model_process=True)


def test_errors_cross_the_pipe_as_themselves_or_named():
    error = DataError("expected 3 channels; convert the images")
    assert type(_portable(error)) is DataError and str(_portable(error)) == str(error)

    class Local(Exception):  # defined in a function: pickle cannot find it by name
        pass

    with pytest.raises(Exception):  # noqa: B017 (whatever pickle raises for it)
        pickle.dumps(Local("x"))
    named = _portable(Local("the reason"))
    assert isinstance(named, RuntimeError) and str(named) == "Local: the reason"
