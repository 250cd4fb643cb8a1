"""The `serve` command: one model behind an OpenAI-compatible HTTP API, run by uvicorn.

A plain function whose signature is its command line (see :mod:`bigmodels.cli`); FastAPI and uvicorn are
imported when it runs, so the rest of the CLI works without the ``serve`` extra.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from typing import Annotated

from ..errors import ConfigError

__all__ = ["serve"]

log = logging.getLogger(__name__)

API_KEY_ENV = "BIGMODELS_API_KEY"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    checkpoint: Annotated[str, "the model: a saved model, training run, Hugging Face directory or hub name (or a "
                               "state dict with --model)"],
    *,
    model: Annotated[str | None, "the registered architecture of a plain state dict, e.g. resnet50"] = None,
    host: Annotated[str, "the address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface)"] = (
        "127.0.0.1"),
    port: Annotated[int, "the TCP port to listen on"] = 8000,
    api_key: Annotated[str | None, f"the key clients must send as 'Authorization: Bearer KEY' (default: the "
                                   f"{API_KEY_ENV} environment variable; none: no key)"] = None,
    name: Annotated[str | None, "the model id clients send and GET /v1/models lists (default: the directory's "
                                "name)"] = None,
    max_batch: Annotated[int, "the most inputs in one batched model call (and prompts x n of a completion)"] = 32,
    max_concurrency: Annotated[int, "requests at work at once (the worker threads)"] = 4,
    max_queue: Annotated[int, "requests waiting beyond those before 429 Too Many Requests"] = 64,
    timeout: Annotated[float, "seconds a request may take before 504"] = 60.0,
    max_body: Annotated[int, "the largest request body in bytes (413 above it)"] = 4 * 2**20,
    batch_window: Annotated[float, "milliseconds the first input to an idle model waits for others to batch with "
                                   "(inputs that arrive while a batch runs go with the next one at once)"] = 5.0,
    cors: Annotated[str | None, "comma-separated origins a browser page may call from (default: none)"] = None,
    model_process: Annotated[bool, "run the batches of /v1/embeddings and /v1/classify in a process of their own "
                                   "(the model loaded twice; its thread no longer waits for the event loop's "
                                   "GIL)"] = False,
    log_level: Annotated[str, "uvicorn's log level: critical, error, warning, info, debug"] = "info",
) -> int:
    """Serve a model over an OpenAI-compatible HTTP API.

    Endpoints: /v1/completions, /v1/embeddings and /v1/models as OpenAI has them, plus /v1/classify,
    /v1/translate, /health and /metrics (Prometheus).

    Example: bigmodels serve runs/gpt --port 8000, then any OpenAI client with
    base_url=http://127.0.0.1:8000/v1. Requests beyond --max-concurrency wait (up to --max-queue, then 429);
    concurrent embedding and classification requests are batched together (up to --max-batch inputs)."""
    from . import require_serve_extra

    require_serve_extra()
    if not 0 < port < 65536:
        raise ConfigError(f"--port {port} is not a TCP port; give one in 1..65535")
    if not batch_window >= 0 or batch_window == float("inf"):
        raise ConfigError(f"--batch-window {batch_window} must be a finite number of milliseconds >= 0, e.g. 5")
    levels = ("critical", "error", "warning", "info", "debug", "trace")
    if log_level not in levels:
        raise ConfigError(f"--log-level {log_level!r} is not one of {', '.join(levels)}")
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    origins = [o.strip() for o in cors.split(",") if o.strip()] if cors else None
    import uvicorn

    from .app import create_app

    app = create_app(checkpoint, architecture=model, api_key=key, name=name, max_batch=max_batch,
                     max_concurrency=max_concurrency, max_queue=max_queue, timeout_s=timeout,
                     max_body_bytes=max_body, cors_origins=origins, batch_window_s=batch_window / 1000.0,
                     model_process=model_process)
    if key is None and not _loopback(host):
        log.warning("serving on %s without an API key: anyone who can reach it may use it; pass --api-key or set "
                    "%s", host, API_KEY_ENV)
    log.info("serving %s at http://%s:%d/v1", app.state.server.served.name, host, port)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
    return 0
