"""The model of the batched endpoints in a process of its own (``bigmodels serve --model-process``).

In one process the model's thread and the event loop take turns holding Python's GIL: the forward pass is hundreds
of operator calls, each of which needs the GIL to start, and a busy event loop (parsing requests, writing
responses) holds it much of the time. Measured here (all-MiniLM-L6-v2, batches of 16, one torch thread, the other
core free): a Python thread busy 30% / 60% of the time slows the model to 0.88-0.93x / 0.77-0.81x of its speed
alone (`python benchmarks/cpu_micro.py --threads 1 gil`), and in the server under 32 concurrent clients the model
ran at 0.78-0.84x its offline speed even with a core to itself. With ``model_process`` the batches of
/v1/embeddings and /v1/classify run in a child process that loads the same model the same way
(:func:`~bigmodels.serve.loading.load_served`): the server sends it tokenized inputs and gets the results back
through a pipe, and the child's GIL is its own. (Separate engine and API processes are what vLLM's V1 engine does
for the same reason.) Through HTTP under that load (`benchmarks/serve_load.py`, 2 vCPUs): 0.86-0.91x the offline
throughput on an AMD EPYC, against 0.85x in one process (0.73-0.86x against 0.75-0.77x on the EPYC of an earlier
day, with an older batcher); the child is busy 96-98% of its core, and the rest of the gap is its small unsorted
batches against offline's length-sorted ones.

The child is spawned (not forked: the parent's threads and OpenMP pools do not survive a fork), starts with the
server and stops with it; a batch that finds it dead starts a new one. An error raised by the model in the child
is raised again in the server, as the same exception where it can be pickled.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import threading
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ConfigError
from .schemas import APIError

__all__ = ["ModelProcess"]

log = logging.getLogger(__name__)

_START_TIMEOUT_S = 300.0


class ModelProcess:
    """A child process holding the model loaded from ``source`` (a path: a module cannot be sent to another
    process), answering ``call(endpoint, items, options)`` for the batched endpoints with the same results as
    the server's own batch functions. Thread-safe (one batch at a time); ``close`` stops the child."""

    def __init__(self, source: str | os.PathLike, *, architecture: str | None = None, batch_size: int = 64,
                 threads: int | None = None, tokenizer: Any = None) -> None:
        if not isinstance(source, str | os.PathLike):
            raise ConfigError("model_process=True loads the model again in a child process, which needs the "
                               f"model's path, not a {type(source).__name__}; pass the path the model was loaded "
                               "from, or model_process=False")
        if tokenizer is not None:  # the child gets the server's tokenizer, sent through the pipe as a pickle
            try:
                pickle.dumps(tokenizer)
            except Exception as e:  # noqa: BLE001 (whatever pickle raises for it)
                raise ConfigError(f"the tokenizer given to the server ({type(tokenizer).__name__}) cannot be sent to "
                                  f"the model process ({type(e).__name__}: {e}); save it beside the model "
                                  "(bigmodels.save(model, dir, tokenizer=tok)) and serve the directory without "
                                  "tokenizer=, or serve without model_process") from None
        self.source, self.architecture, self.batch_size = str(source), architecture, batch_size
        self.tokenizer = tokenizer
        self.threads = threads or torch.get_num_threads()
        self._lock = threading.Lock()
        self._process: Any = None
        self._conn: Any = None
        self.endpoints: list[str] = []
        self._start()

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        process = context.Process(target=_child_main, name="bigmodels-model", daemon=True,
                                  args=(child, self.source, self.architecture, self.batch_size, self.threads,
                                        self.tokenizer))
        process.start()
        child.close()
        self._process, self._conn = process, parent
        if not parent.poll(_START_TIMEOUT_S):
            self.close()
            raise ConfigError(f"the model process did not load {self.source} within {_START_TIMEOUT_S:g} s; serve "
                              "without --model-process, or check that the model loads (bigmodels evaluate)")
        try:
            kind, payload = self._receive()
        except APIError:  # the pipe closed: the child died while loading
            code = process.exitcode
            self.close()
            raise ConfigError(f"the model process exited (exit code {code}) while loading {self.source}; serve "
                              "without --model-process, or check that the model loads (bigmodels evaluate)") from None
        if kind == "error":
            self.close()
            raise payload
        self.endpoints = payload
        log.info("model process %d serves %s", process.pid, ", ".join(self.endpoints) or "nothing")

    def _receive(self) -> tuple[str, Any]:
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            code = self._process.exitcode if self._process is not None else None
            raise APIError(503, f"the model process exited (exit code {code}) during this batch; it restarts with "
                                "the next one: retry (if this repeats, the server may be out of memory: lower "
                                "--max-batch)", type="server_error", code="model_process_exited",
                           headers={"Retry-After": "1"}) from None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def call(self, endpoint: str, items: Sequence[Any], options: dict[str, Any]) -> list:
        """The results of one batch of ``endpoint`` (tokenized rows for /v1/embeddings: float32 vectors)."""
        with self._lock:
            if not self.alive:
                log.warning("the model process is gone (exit code %s); starting a new one",
                            getattr(self._process, "exitcode", None))
                self._drop()
                self._start()
            self._conn.send((endpoint, list(items), dict(options)))
            kind, payload = self._receive()
        if kind == "error":
            raise payload
        if endpoint == "/v1/embeddings":
            return list(torch.from_numpy(payload).unbind(0))
        return payload

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._process = self._conn = None

    def close(self) -> None:
        """Stop the child (a polite request, then terminate after 5 s)."""
        process = self._process
        if process is None:
            return
        try:
            if process.is_alive():
                self._conn.send(None)
        except (OSError, BrokenPipeError):
            pass
        process.join(5)
        if process.is_alive():
            process.terminate()
            process.join(5)
        self._drop()


def _portable(error: BaseException) -> BaseException:
    """``error`` if it survives pickling (to be raised again in the server), else a RuntimeError naming it."""
    import pickle

    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001 (whatever the exception's constructor does)
        return RuntimeError(f"{type(error).__name__}: {error}")


def _child_main(conn, source: str, architecture: str | None, batch_size: int, threads: int,
                tokenizer: Any = None) -> None:
    torch.set_num_threads(threads)
    try:
        from .loading import batch_functions, load_served

        served = load_served(source, architecture=architecture, tokenizer=tokenizer, batch_size=batch_size)
        functions = batch_functions(served)
    except BaseException as e:  # noqa: BLE001 (the server reports why the child could not start)
        conn.send(("error", _portable(e)))
        return
    conn.send(("ready", sorted(functions)))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if message is None:
            return
        endpoint, items, options = message
        try:
            out = functions[endpoint](items, options)
            if endpoint == "/v1/embeddings":  # one array through the pipe, not a pickle per vector
                out = torch.stack(out).numpy()
            conn.send(("ok", out))
        except Exception as e:  # noqa: BLE001 (sent to the server, raised there)
            conn.send(("error", _portable(e)))
