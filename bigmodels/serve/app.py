"""An OpenAI-compatible HTTP server over the inference pipelines: ``create_app(model) -> FastAPI``.

=======================  ===================================================================================
endpoint                 what
=======================  ===================================================================================
POST /v1/completions     OpenAI completions: prompt (a text or a list), max_tokens, temperature, top_p, stop,
                         seed, n, echo, stream (server-sent events ending with ``data: [DONE]``), usage
POST /v1/embeddings      OpenAI embeddings: input (a text or a list), encoding_format float | base64
GET  /v1/models          the served model (OpenAI's list shape)
POST /v1/classify        texts (``input``) or base64 images (``image``) -> the ``top_k`` best labels of each
POST /v1/translate       texts -> translations (beam search)
POST /v1/explain         one text or image, a method (saliency, ig, gradcam, occlusion, attention) and a target
                         -> attributions per token and word, or a heatmap (grid and PNG)
GET  /health             {"status": "ok", ...}: in flight, queued
GET  /metrics            Prometheus: requests, latency histograms, model-call times, tokens, batch sizes,
                         queue depth
GET  /                   the web page (``serve/static/index.html``) where there is one, else the endpoints
=======================  ===================================================================================

Limits: the request body (413), prompt + max_tokens against the model's context (400 with the numbers), the
concurrency and queue length (429 with Retry-After), a per-request timeout (504), an optional API key (401);
CORS is off unless ``cors_origins`` are given. Bad JSON and wrong types are 400 with an OpenAI-style message.
Models run off the event loop in a thread pool of ``max_concurrency`` threads; concurrent embedding and
classification requests are batched together (:mod:`bigmodels.serve.batching`), in the server's process or, with
``model_process=True``, in a child process of their own whose GIL the event loop does not share
(:mod:`bigmodels.serve.worker`); each completion decodes with state of its own.

    >>> import bigmodels
    >>> from fastapi.testclient import TestClient
    >>> from bigmodels.data.tokenizers import Tokenizer
    >>> tok = Tokenizer.train_chars("hello world")
    >>> app = create_app(bigmodels.create_model("gpt_mini", vocab_size=tok.vocab_size), tokenizer=tok)
    >>> with TestClient(app) as client:
    ...     r = client.post("/v1/completions", json={"prompt": "hello", "max_tokens": 4, "temperature": 0})
    >>> r.status_code, len(r.json()["choices"])
    (200, 1)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import functools
import io
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from PIL import Image, UnidentifiedImageError
from starlette.exceptions import HTTPException as StarletteHTTPException
from torch import nn

from ..errors import BigModelsError, ConfigError
from ..infer.pipelines import ImageClassificationPipeline
from ..models._contract import kind_of
from .batching import Batcher
from .completions import greedy_decoder, plan_completion, run_completion
from .explaining import Explainer
from .limits import Admission, Guard
from .loading import ENDPOINT_TASKS, Served, batch_functions, encode_for_embedding, load_served
from .metrics import MetricsMiddleware, ServerMetrics
from .schemas import (
    MAX_INPUTS,
    APIError,
    ClassifyRequest,
    Completion,
    CompletionRequest,
    EmbeddingList,
    EmbeddingRequest,
    ExplainRequest,
    ModelList,
    TranslateRequest,
    error_body,
)
from .worker import ModelProcess

__all__ = ["create_app", "ServerState"]

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"  # the web page, where one is shipped: index.html and its files
ENDPOINTS = ("/v1/completions", "/v1/embeddings", "/v1/models", "/v1/classify", "/v1/translate", "/v1/explain",
             "/health", "/metrics", "/")


class _Pool(concurrent.futures.Executor):
    """The app's worker threads (``workers`` of them), started on first use and again after a shutdown, so an
    app outlives one server's lifespan (a TestClient, then uvicorn)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def submit(self, fn, /, *args, **kwargs) -> concurrent.futures.Future:
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="bigmodels-serve")
            return self._pool.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=cancel_futures)


class ServerState:
    """What one app holds: the served model, the admission, the thread pool, the batchers and the metrics."""

    def __init__(self, served: Served, *, max_batch: int, max_concurrency: int, max_queue: int, timeout_s: float,
                 batch_window_s: float, model_process: ModelProcess | None = None) -> None:
        self.served, self.max_batch, self.timeout_s = served, max_batch, timeout_s
        self.batch_window_s = batch_window_s
        self.metrics = ServerMetrics()
        self.admission = Admission(max_concurrency, max_queue, self.metrics.admission_changed)
        self.executor = _Pool(max_concurrency)
        # batches run one after another in one thread of their own: the same warm thread for every batch
        self.batch_executor = _Pool(1)
        self.unexpected_errors = 0  # 500s: bugs, never a client's mistake (a test keeps this at 0)
        self.explainer = Explainer(served.model, served.tokenizer)
        self.batchers: dict[str, Batcher] = {}
        self.model_process = model_process
        generation = served.pipe("/v1/completions")
        # greedy completions on the CPU pick through one shared float16 screen of the output layer (exact)
        self.greedy = greedy_decoder(generation) if generation is not None else None
        for endpoint, fn in batch_functions(served).items():
            if model_process is not None:  # the same function, run by the model's own process
                fn = functools.partial(model_process.call, endpoint)
            histogram = self.metrics.batch_size.labels(endpoint)
            self.batchers[endpoint] = Batcher(self.metrics.timed(endpoint, fn), max_batch=max_batch,
                                              executor=self.batch_executor, window_s=batch_window_s,
                                              on_batch=histogram.observe)

    # -- checks

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.served.name:
            raise APIError(404, f"The model `{model}` does not exist: this server serves `{self.served.name}` "
                                "(GET /v1/models); send that id, or leave model out", param="model",
                           code="model_not_found")

    def need(self, endpoint: str):
        pipe = self.served.pipe(endpoint)
        if pipe is None:
            answers = ", ".join(self.served.pipelines) or "none"
            raise APIError(404, f"the served model `{self.served.name}` is a {self.served.task} model, which does "
                                f"not answer {endpoint} (it answers {answers}); serve a model of that kind "
                                f"({', '.join(ENDPOINT_TASKS[endpoint])}) for {endpoint}", code="unsupported_endpoint")
        return pipe

    # -- running work

    def _deadline_error(self) -> APIError:
        return APIError(504, f"the request took longer than the server's timeout of {self.timeout_s:g} s and was "
                             "stopped; ask for less (fewer tokens or inputs) or start the server with a larger "
                             "--timeout", type="timeout_error", code="timeout")

    async def _acquire(self, deadline: float) -> None:
        try:  # asyncio.timeout, not wait_for: no task of its own for each request (~10% of the event loop's CPU)
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                await self.admission.acquire()
        except TimeoutError:
            raise self._deadline_error() from None

    def submit(self, fn: Callable[[threading.Event], Any], cancel: threading.Event) -> asyncio.Future:
        """``fn(cancel)`` in the pool; the slot it was admitted with is given back when the thread is done."""
        loop = asyncio.get_running_loop()
        job = self.executor.submit(fn, cancel)
        job.add_done_callback(lambda _: loop.call_soon_threadsafe(self.admission.release))
        future = asyncio.wrap_future(job)
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # read even if nobody waits any more
        return future

    async def run(self, fn: Callable[[threading.Event], Any]) -> Any:
        """``fn(cancel)`` admitted, in the pool, within the timeout (504 after it, with ``cancel`` set)."""
        deadline = time.monotonic() + self.timeout_s
        await self._acquire(deadline)
        cancel = threading.Event()
        future = self.submit(fn, cancel)
        try:
            return await asyncio.wait_for(asyncio.shield(future), max(deadline - time.monotonic(), 0.0))
        except TimeoutError:
            raise self._deadline_error() from None
        finally:
            cancel.set()  # a timeout or a client gone: the worker stops at its next step

    async def batched(self, endpoint: str, items: Sequence[Any], options: dict[str, Any]) -> list:
        """``items`` through the endpoint's batcher, admitted and within the timeout."""
        deadline = time.monotonic() + self.timeout_s
        await self._acquire(deadline)
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                return await self.batchers[endpoint].submit(items, options)
        except TimeoutError:
            raise self._deadline_error() from None
        finally:
            self.admission.release()

    async def in_pool(self, fn: Callable[[], Any]) -> Any:
        """A short job (decoding images) in the pool, for a request that holds no slot yet."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)


def _texts(value: str | list[str], field: str) -> list[str]:
    texts = [value] if isinstance(value, str) else list(value)
    if not texts:
        raise APIError(400, f"{field} is an empty list; give a text or a list of texts", param=field)
    if len(texts) > MAX_INPUTS:
        raise APIError(400, f"{field} has {len(texts)} items; send at most {MAX_INPUTS} per request", param=field)
    return texts


def _decode_image(data: str, index: int) -> Image.Image:
    """A base64 image file (or a ``data:image/...;base64,`` URL) -> a PIL image; 400 naming it when it is not."""
    text = data.split(",", 1)[1] if data.startswith("data:") and "," in data else data
    try:
        raw = base64.b64decode(text, validate=True)
        image = Image.open(io.BytesIO(raw))
        image.load()
    except (binascii.Error, ValueError) as e:
        raise APIError(400, f"image[{index}] is not valid base64 ({e}); send the image file's bytes base64-encoded",
                       param="image") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise APIError(400, f"image[{index}] is not an image file PIL can read ({type(e).__name__}: {e}); send a "
                            "PNG, JPEG, BMP or WebP file, base64-encoded", param="image") from None
    return image


def _chunk(completion_id: str, created: int, model: str, choices: list[dict], usage: dict | None = None) -> str:
    body = {"id": completion_id, "object": "text_completion", "created": created, "model": model, "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return f"data: {json.dumps(body)}\n\n"


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """One line naming each bad field and what it should be, and the first field (OpenAI's ``param``)."""
    by_field: dict[str, list[str]] = {}
    got: dict[str, Any] = {}
    for error in exc.errors():
        loc = [str(x) for x in error.get("loc", ()) if x != "body"]
        if error.get("type") == "json_invalid":
            return (f"the request body is not valid JSON ({error.get('ctx', {}).get('error', error['msg'])}); send "
                    'a JSON object, e.g. {"prompt": "Hello"}'), None
        if not loc:
            if error.get("type") == "missing":
                return 'the request has no body; send a JSON object, e.g. {"prompt": "Hello"}', None
            return ("the request body must be a JSON object sent with Content-Type: application/json, e.g. "
                    '{"prompt": "Hello"}'), None
        # a union's branches add their type name to the location: prompt.str, prompt.list[str] -> prompt
        field = ".".join(x for x in loc if not any(c in x for c in "[]") and x not in ("str", "int", "float"))
        by_field.setdefault(field or loc[0], []).append(error["msg"])
        got.setdefault(field or loc[0], error.get("input"))
    parts = []
    for field, messages in by_field.items():
        seen = list(dict.fromkeys(messages))
        shown = "" if messages == ["Field required"] else f" (got {got[field]!r:.60})"
        parts.append(f"{field}: {'; or '.join(seen)}{shown}")
    return "; ".join(parts), next(iter(by_field), None)


def _check_sizes(max_batch: int, max_concurrency: int, max_queue: int, timeout_s: float, max_body_bytes: int,
                 batch_window_s: float) -> None:
    for name, value, least in (("max_batch", max_batch, 1), ("max_concurrency", max_concurrency, 1),
                               ("max_queue", max_queue, 0), ("max_body_bytes", max_body_bytes, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"{name}={value!r} must be a whole number >= {least}")
    for name, value in (("timeout_s", timeout_s), ("batch_window_s", batch_window_s)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0 or (
                name == "timeout_s" and value == 0):
            raise ConfigError(f"{name}={value!r} must be a finite number of seconds "
                              f"{'> 0' if name == 'timeout_s' else '>= 0'}")


def create_app(model_or_path: nn.Module | str | os.PathLike, *, api_key: str | None = None, max_batch: int = 32,
               max_concurrency: int = 4, max_queue: int = 64, timeout_s: float = 60.0,
               max_body_bytes: int = 4 * 2**20, cors_origins: Sequence[str] | None = None,
               architecture: str | None = None, tokenizer: Any = None, name: str | None = None,
               batch_window_s: float = 0.005, model_process: bool = False) -> FastAPI:
    """The FastAPI app serving one model (see the module docstring for the endpoints and limits).

    ``model_or_path``: an ``nn.Module`` (text models with ``tokenizer=``), a bigmodels or Hugging Face directory,
    a training run, a hub name, or a plain state dict with ``architecture`` naming its registered model.
    ``api_key``: required as ``Authorization: Bearer KEY`` when set. ``max_batch``: the most inputs one model
    call of dynamic batching takes (and the most prompts x n of one completion request). ``max_concurrency``:
    requests at work at once (the thread pool's size); ``max_queue``: requests waiting beyond those before a
    429. ``timeout_s``: the most a request may take (504 after it). ``max_body_bytes``: 413 above it.
    ``cors_origins``: the origins allowed to call from a browser (none by default). ``name``: the model id
    clients send (default: the directory's or the model's name). ``batch_window_s``: how long the first input to
    reach an idle model waits for others (a busy model's next batch takes everything waiting when it frees up).
    ``model_process``: run the batches of /v1/embeddings and /v1/classify in a child process that loads the model
    from the same path (:mod:`bigmodels.serve.worker`: the model no longer waits for the event loop's GIL).
    """
    _check_sizes(max_batch, max_concurrency, max_queue, timeout_s, max_body_bytes, batch_window_s)
    if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
        raise ConfigError("api_key is empty; give the key clients must send, or None to serve without one")
    served = load_served(model_or_path, architecture=architecture, tokenizer=tokenizer, name=name,
                         batch_size=max(max_batch, 1))
    worker = None
    if model_process and batch_functions(served):
        worker = ModelProcess(model_or_path, architecture=architecture, batch_size=max(max_batch, 1),
                              tokenizer=tokenizer)
    state = ServerState(served, max_batch=max_batch, max_concurrency=max_concurrency, max_queue=max_queue,
                        timeout_s=float(timeout_s), batch_window_s=float(batch_window_s), model_process=worker)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        state.executor.shutdown(wait=False, cancel_futures=True)
        state.batch_executor.shutdown(wait=False, cancel_futures=True)
        if state.model_process is not None:
            state.model_process.close()

    app = FastAPI(title="bigmodels", summary=f"serving {served.name}", lifespan=lifespan)
    app.state.server = state
    _install_error_handlers(app, state)
    _add_routes(app, state)
    _add_page(app, state)
    # middleware: the last added is the outermost: metrics -> CORS -> key and body size -> the endpoints
    app.add_middleware(Guard, api_key=api_key, max_body_bytes=max_body_bytes)
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(MetricsMiddleware, metrics=state.metrics, endpoints=ENDPOINTS)
    return app


def _install_error_handlers(app: FastAPI, state: ServerState) -> None:
    def answer(status: int, body: dict, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return answer(exc.status, error_body(exc.message, exc.type, exc.param, exc.code), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return answer(400, error_body(message, param=param, code="invalid_value"))

    @app.exception_handler(BigModelsError)
    async def user_error(request: Request, exc: BigModelsError) -> JSONResponse:
        return answer(400, error_body(str(exc), code=type(exc).__name__))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = (f"no endpoint {request.method} {request.url.path}; the endpoints are "
                       f"{', '.join(ENDPOINTS)}")
        elif exc.status_code == 405:
            message = f"{request.url.path} does not take {request.method}; see GET /docs for its method"
        else:
            message = str(exc.detail)
        return answer(exc.status_code, error_body(message, code=str(exc.status_code)), exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        state.unexpected_errors += 1
        log.error("unexpected error answering %s %s", request.method, request.url.path, exc_info=exc)
        return answer(500, error_body(f"internal error ({type(exc).__name__}); the server log has the details",
                                      type="server_error", code="internal_error"))


def _add_routes(app: FastAPI, state: ServerState) -> None:
    served = state.served

    @app.get("/health")
    async def health() -> dict[str, Any]:
        body = {"status": "ok", "model": served.name, "in_flight": state.admission.in_flight,
                "queued": state.admission.queued}
        if state.model_process is not None:  # a dead one restarts with the next batch
            body["model_process"] = {"pid": state.model_process.pid, "alive": state.model_process.alive}
        return body

    @app.get("/metrics")
    async def metrics() -> Response:
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{
            "id": served.name, "object": "model", "created": served.created, "owned_by": "bigmodels",
            "task": served.task, "endpoints": list(served.pipelines), "context_length": served.context,
            "explain_methods": state.explainer.methods()}]}

    @app.post("/v1/completions", response_model=None, responses={200: {"model": Completion}})
    async def completions(request: CompletionRequest) -> Any:
        state.check_model(request.model)
        pipe = state.need("/v1/completions")
        plan = plan_completion(pipe, request, context=served.context, max_rows=state.max_batch)
        completion_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if request.stream:
            return await _stream(state, pipe, plan, completion_id, created, request)
        choices = await state.run(state.metrics.timed("/v1/completions", lambda cancel: run_completion(
            pipe, plan, on_text=lambda i, t: None, cancel=cancel, decoder=state.greedy)))
        generated = sum(len(c.tokens) for c in choices)
        state.metrics.prompt_tokens.inc(plan.prompt_tokens)
        state.metrics.generated_tokens.inc(generated)
        return {"id": completion_id, "object": "text_completion", "created": created, "model": served.name,
                "choices": [{"text": (plan.prompts[i // plan.n] if plan.echo else "") + c.text, "index": i,
                             "logprobs": None, "finish_reason": c.finish_reason} for i, c in enumerate(choices)],
                "usage": {"prompt_tokens": plan.prompt_tokens, "completion_tokens": generated,
                          "total_tokens": plan.prompt_tokens + generated}}

    @app.post("/v1/embeddings", response_model=None, responses={200: {"model": EmbeddingList}})
    async def embeddings(request: EmbeddingRequest) -> Any:
        state.check_model(request.model)
        pipe = state.need("/v1/embeddings")
        texts = _texts(request.input, "input")
        width = pipe.model.config.hidden_size
        if request.dimensions is not None and request.dimensions != width:
            raise APIError(400, f"dimensions={request.dimensions}: this model's embeddings have {width} dimensions "
                                f"and are not shortened; drop dimensions or set it to {width}", param="dimensions")
        rows, tokens = encode_for_embedding(pipe, texts)
        vectors = await state.batched("/v1/embeddings", rows, {})
        if request.encoding_format == "base64":
            encoded = [base64.b64encode(v.numpy().astype("<f4").tobytes()).decode("ascii") for v in vectors]
        else:
            encoded = [v.tolist() for v in vectors]
        return JSONResponse({"object": "list", "data": [{"object": "embedding", "index": i, "embedding": e}
                                                        for i, e in enumerate(encoded)],
                             "model": served.name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    @app.post("/v1/classify")
    async def classify(request: ClassifyRequest) -> dict[str, Any]:
        state.check_model(request.model)
        pipe = state.need("/v1/classify")
        images = isinstance(pipe, ImageClassificationPipeline)
        if (request.input is None) == (request.image is None):
            raise APIError(400, "give exactly one of input (texts) and image (base64 image files)",
                           param="input" if request.input is not None else None)
        if images != (request.image is not None):
            field = "image" if images else "input"
            kind = "an image" if images else "a text"
            raise APIError(400, f"`{served.name}` is {kind} classifier: send {field}, not "
                                f"{'input' if images else 'image'}", param=field)
        if images:
            data = _texts(request.image, "image")
            prepared = await state.in_pool(lambda: [pipe.preprocess(_decode_image(d, i)) for i, d in enumerate(data)])
        else:
            prepared = [pipe.preprocess(t) for t in _texts(request.input, "input")]
        results = await state.batched("/v1/classify", prepared, {"top_k": request.top_k})
        rows = []
        for i, ranked in enumerate(results):
            ranked = [ranked] if isinstance(ranked, dict) else ranked
            rows.append({"object": "classification", "index": i, "label": ranked[0]["label"],
                         "score": ranked[0]["score"], "labels": ranked})
        return {"object": "list", "model": served.name, "data": rows}

    @app.post("/v1/explain")
    async def explain(request: ExplainRequest) -> JSONResponse:
        state.check_model(request.model)
        methods = state.explainer.methods()
        if not methods:
            raise APIError(404, f"the served model `{served.name}` ({served.task}) has nothing the explanation "
                                "methods can attribute here (an ONNX export, or no class logits and no attention); "
                                "serve the PyTorch model for /v1/explain", code="unsupported_endpoint")
        state.explainer.check(request.method)
        images = kind_of(served.model) == "vision"
        if (request.input is None) == (request.image is None):
            raise APIError(400, "give exactly one of input (a text) and image (a base64 image file)", param="input")
        if images != (request.image is not None):
            field = "image" if images else "input"
            raise APIError(400, f"`{served.name}` takes {'an image' if images else 'a text'}: send {field}",
                           param=field)
        inputs = await state.in_pool(lambda: _decode_image(request.image, 0)) if images else request.input
        body = await state.run(state.metrics.timed("/v1/explain", lambda cancel: state.explainer.run(
            inputs, request.method, target=request.target, settings=request.settings(), position=request.position,
            png=request.png, cancel=cancel)))
        return JSONResponse({**body, "model": served.name})

    @app.post("/v1/translate")
    async def translate(request: TranslateRequest) -> dict[str, Any]:
        state.check_model(request.model)
        pipe = state.need("/v1/translate")
        texts = _texts(request.input, "input")
        prepared = [pipe.preprocess(t) for t in texts]
        options = {"num_beams": request.num_beams, "max_new_tokens": request.max_tokens}
        results = await state.run(state.metrics.timed("/v1/translate", lambda cancel: pipe.run(prepared, **options)))
        return {"object": "list", "model": served.name,
                "data": [{"object": "translation", "index": i, "translation_text": r["translation_text"]}
                         for i, r in enumerate(results)]}


async def _stream(state: ServerState, pipe, plan, completion_id: str, created: int,
                  request: CompletionRequest) -> StreamingResponse:
    """Server-sent events: a chunk per piece of text, one with each choice's finish reason, the usage when asked
    (``stream_options.include_usage``), then ``data: [DONE]``. Admission (429) and every check (400) happen
    before the 200; a timeout or a failure after it is an ``error`` event, then ``[DONE]``."""
    deadline = time.monotonic() + state.timeout_s
    await state._acquire(deadline)
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    cancel = threading.Event()
    name = state.served.name

    def on_text(index: int, text: str) -> None:
        loop.call_soon_threadsafe(events.put_nowait, ("text", index, text))

    def work(cancel: threading.Event):
        return run_completion(pipe, plan, on_text=on_text, cancel=cancel, decoder=state.greedy)

    future = state.submit(state.metrics.timed("/v1/completions", work), cancel)
    future.add_done_callback(lambda f: events.put_nowait(("done", None, f)))
    if plan.echo:
        for i in range(len(plan.prompt_ids)):
            events.put_nowait(("text", i, plan.prompts[i // plan.n]))

    async def body() -> AsyncIterator[str]:
        try:
            while True:
                try:
                    kind, index, value = await asyncio.wait_for(events.get(), max(deadline - time.monotonic(), 0))
                except TimeoutError:
                    cancel.set()
                    yield f"data: {json.dumps(error_body(state._deadline_error().message, 'timeout_error'))}\n\n"
                    break
                if kind == "text":
                    yield _chunk(completion_id, created, name, [{"text": value, "index": index, "logprobs": None,
                                                                 "finish_reason": None}])
                    continue
                if value.cancelled() or value.exception() is not None:
                    error = value.exception() if not value.cancelled() else None
                    known = isinstance(error, BigModelsError)
                    if not known:
                        state.unexpected_errors += 1
                        log.error("unexpected error in a streamed completion", exc_info=error)
                    message = str(error) if known else "internal error; the server log has the details"
                    kind = "invalid_request_error" if known else "server_error"
                    yield f"data: {json.dumps(error_body(message, kind))}\n\n"
                    break
                choices = value.result()
                generated = sum(len(c.tokens) for c in choices)
                state.metrics.prompt_tokens.inc(plan.prompt_tokens)
                state.metrics.generated_tokens.inc(generated)
                yield _chunk(completion_id, created, name, [
                    {"text": "", "index": i, "logprobs": None, "finish_reason": c.finish_reason}
                    for i, c in enumerate(choices)])
                if request.stream_options is not None and request.stream_options.include_usage:
                    yield _chunk(completion_id, created, name, [], {
                        "prompt_tokens": plan.prompt_tokens, "completion_tokens": generated,
                        "total_tokens": plan.prompt_tokens + generated})
                break
            yield "data: [DONE]\n\n"
        finally:
            cancel.set()  # the client gone or the stream over: the worker stops at its next step

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _add_page(app: FastAPI, state: ServerState) -> None:
    """GET /: the web page in ``serve/static/`` (``index.html``, its files under /static) where it is shipped;
    else a short JSON index of the endpoints."""
    index = STATIC / "index.html"
    if index.is_file():
        from fastapi.staticfiles import StaticFiles

        app.mount("/static", StaticFiles(directory=STATIC), name="static")

        @app.get("/", include_in_schema=False)
        async def page() -> FileResponse:
            return FileResponse(index)
        return

    @app.get("/", include_in_schema=False)
    async def root() -> dict[str, Any]:
        return {"model": state.served.name, "endpoints": [*state.served.pipelines, "/v1/models", "/health",
                                                          "/metrics"], "docs": "/docs"}

