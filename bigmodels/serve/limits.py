"""What protects the server: admission (concurrency and queue length, 429), the API key (401), the body size
(413) and the model's context (400).

:class:`Admission` lives on the event loop: a request takes a slot, or waits in a bounded queue for one, or is
turned away at once with 429 and ``Retry-After``, as vLLM and TGI answer under overload; a slot is given back
when the work it admitted has really finished (the thread, not the HTTP request), so the count is honest even
when a request timed out. :class:`Guard` is an ASGI middleware that checks the key and reads the body up to its
limit before any endpoint parses it.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from .schemas import APIError, error_body

__all__ = ["Admission", "Guard", "check_context", "OPEN_PATHS"]

OPEN_PATHS = ("/health", "/metrics", "/", "/docs", "/openapi.json")  # no key: probes, scrapers, the page, the docs


class Admission:
    """At most ``max_concurrency`` requests at work and ``max_queue`` waiting; one more is refused with 429.

    ``on_change(in_flight, queued)`` is called whenever either count changes (the metrics' gauges).
    """

    def __init__(self, max_concurrency: int, max_queue: int,
                 on_change: Callable[[int, int], None] | None = None) -> None:
        self.max_concurrency, self.max_queue = max_concurrency, max_queue
        self.in_flight = 0
        self.queued = 0
        self._waiters: list[asyncio.Future] = []
        self._on_change = on_change or (lambda a, q: None)

    async def acquire(self) -> None:
        """Take a slot (waiting in the queue for one); raise a 429 :class:`APIError` when the queue is full."""
        if self.in_flight < self.max_concurrency and not self._waiters:
            self.in_flight += 1
            self._on_change(self.in_flight, self.queued)
            return
        if self.queued >= self.max_queue:
            raise APIError(429, f"the server is at capacity ({self.in_flight} requests running, {self.queued} "
                                "waiting); retry after the time in the Retry-After header",
                           type="rate_limit_error", code="server_overloaded", headers={"Retry-After": "1"})
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.queued += 1
        self._on_change(self.in_flight, self.queued)
        try:
            await waiter  # release() hands its slot over: in_flight already counts this request
        except BaseException:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif waiter.done() and not waiter.cancelled():
                self.release()  # the slot was handed over just as this request gave up: pass it on
            raise
        finally:
            self.queued -= 1
            self._on_change(self.in_flight, self.queued)

    def release(self) -> None:
        """Give a slot back (on the event loop's thread): to the first waiter, else free it."""
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return
        self.in_flight -= 1
        self._on_change(self.in_flight, self.queued)


def check_context(prompt_tokens: int, max_tokens: int, context: int | None, which: str = "the prompt") -> None:
    """400 when ``prompt_tokens + max_tokens`` exceeds the model's ``context`` (None: no limit), with the numbers."""
    if context is None or prompt_tokens + max_tokens <= context:
        return
    fix = (f"shorten the prompt to fewer than {context} tokens" if prompt_tokens >= context else
           f"lower max_tokens to at most {context - prompt_tokens}")
    raise APIError(400, f"This model's maximum context length is {context} tokens. However, you requested "
                        f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in {which}, {max_tokens} for the "
                        f"completion); {fix}.", param="max_tokens" if prompt_tokens < context else "prompt",
                   code="context_length_exceeded")


def _answer(status: int, body: dict[str, Any], headers: Iterable[tuple[bytes, bytes]] = ()):
    payload = json.dumps(body).encode()
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                         *headers]}
    return start, {"type": "http.response.body", "body": payload}


class Guard:
    """ASGI middleware: the API key (``Authorization: Bearer KEY``; 401 in OpenAI's shape) on every path but
    :data:`OPEN_PATHS`, then the request body read whole up to ``max_body_bytes`` (413 past it, whether the
    client sent a Content-Length or not) and handed on to the app."""

    def __init__(self, app: Callable[..., Awaitable[None]], *, api_key: str | None, max_body_bytes: int) -> None:
        self.app, self.api_key, self.max_body_bytes = app, api_key, max_body_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        path = scope["path"]
        if self.api_key is not None and scope["method"] != "OPTIONS" and not _open(path):
            given = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, key = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), self.api_key.encode()):
                what = "No API key provided" if not given else "Incorrect API key provided"
                for message in _answer(401, error_body(
                        f"{what}: send the server's key as the header 'Authorization: Bearer KEY' (the openai "
                        "client's api_key)", code="invalid_api_key"), [(b"www-authenticate", b"Bearer")]):
                    await send(message)
                return
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            await self._too_large(send, int(length))
            return
        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                await self._too_large(send, None)
                return
            if not message.get("more_body", False):
                break
        body, sent = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the client's disconnect

        await self.app(scope, replay, send)

    async def _too_large(self, send: Callable, length: int | None) -> None:
        size = f"{length} bytes" if length is not None else "more than that"
        for message in _answer(413, error_body(
                f"the request body ({size}) exceeds the server's limit of {self.max_body_bytes} bytes; send less "
                "per request (fewer or shorter inputs, smaller images) or start the server with a larger "
                "--max-body", code="request_too_large")):
            await send(message)


def _open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith("/static/")
