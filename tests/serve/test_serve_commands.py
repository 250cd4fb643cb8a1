"""`bigmodels serve`: its help, its errors as one line, and the app it hands to uvicorn."""

from __future__ import annotations

import pytest
from serve_models import client, gpt

import bigmodels


@pytest.fixture
def uvicorn_run(monkeypatch):
    """uvicorn.run recorded instead of run: (app, keyword arguments)."""
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    return calls


def test_help_lists_every_option(run_cli):
    code, out, _ = run_cli(["serve", "--help"])
    assert code == 0
    for option in ("--model", "--host", "--port", "--api-key", "--max-batch", "--max-concurrency", "--max-queue",
                   "--timeout", "--max-body", "--batch-window", "--cors", "CHECKPOINT"):
        assert option in out, option
    code, out, _ = run_cli(["--help"])
    assert "serve" in out


def test_serve_builds_the_app_and_runs_it_on_loopback(run_cli, uvicorn_run, chars, tmp_path, monkeypatch):
    bigmodels.save(gpt(chars), tmp_path / "gpt", tokenizer=chars)
    monkeypatch.setenv("BIGMODELS_API_KEY", "from-env")
    code, _, err = run_cli(["serve", tmp_path / "gpt", "--port", "8123", "--max-concurrency", "2",
                            "--max-batch", "8", "--timeout", "5", "--name", "my-gpt", "--batch-window", "2.5"])
    assert code == 0, err
    (app, options), = uvicorn_run
    assert options["host"] == "127.0.0.1" and options["port"] == 8123
    state = app.state.server
    assert state.served.name == "my-gpt" and state.admission.max_concurrency == 2 and state.timeout_s == 5
    assert state.batch_window_s == 0.0025  # milliseconds on the command line
    with client(app) as c:
        ask = {"prompt": "the", "max_tokens": 3}
        assert c.post("/v1/completions", json=ask).status_code == 401  # the key came from the environment
        assert c.post("/v1/completions", json=ask, headers={"Authorization": "Bearer from-env"}).status_code == 200


def test_mistakes_are_one_line_and_exit_2(run_cli, uvicorn_run, tmp_path):
    for args, words in (([tmp_path / "missing"], "missing"),
                        ([tmp_path, "--port", "70000"], "--port 70000"),
                        ([tmp_path, "--log-level", "loud"], "--log-level"),
                        ([tmp_path, "--batch-window", "-1"], "--batch-window -1"),
                        ([tmp_path / "w.pth", "--model", " "], "--model is empty")):
        code, _, err = run_cli(["serve", *args])
        assert code == 2 and err.startswith("error: ") and words in err, (args, err)
        assert "Traceback" not in err
    assert not uvicorn_run
