"""The limits and errors: bad input is a 4xx in OpenAI's shape and never reaches the 500 handler; body size
(413), context (400 with the numbers), API key (401), CORS, timeout (504), admission (429 with Retry-After)."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import time

import pytest
from serve_models import client, embedder, gpt, image_classifier, slowed, text_classifier

from bigmodels.serve import create_app
from bigmodels.serve.limits import Admission
from bigmodels.serve.schemas import APIError

# (body or raw bytes, the status, words of the message) for POST /v1/completions on the tiny GPT
BAD_COMPLETIONS = [
    (b"{bad json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (b"", 400, "no body"),
    (b'{"prompt": "the", "temperature": NaN}', 400, "temperature"),
    ({}, 400, "prompt: Field required"),
    ({"prompt": 5}, 400, "prompt"),
    ({"prompt": ["the", 5]}, 400, "prompt"),
    ({"prompt": []}, 400, "empty list"),
    ({"prompt": ""}, 400, "empty"),
    ({"prompt": "the ~ dog"}, 400, "prompt"),  # a character the tokenizer does not know
    ({"prompt": "the", "max_tokens": "5"}, 400, "max_tokens"),
    ({"prompt": "the", "max_tokens": -1}, 400, "max_tokens"),
    ({"prompt": "the", "max_tokens": 2.5}, 400, "max_tokens"),
    ({"prompt": "the", "max_tokens": 10**30}, 400, "maximum context length is 64 tokens"),
    ({"prompt": "the", "temperature": -1}, 400, "temperature"),
    ({"prompt": "the", "temperature": "hot"}, 400, "temperature"),
    ({"prompt": "the", "top_p": 0}, 400, "top_p"),
    ({"prompt": "the", "top_p": 1.5}, 400, "top_p"),
    ({"prompt": "the", "top_k": 0}, 400, "top_k"),
    ({"prompt": "the", "n": 0}, 400, "n"),
    ({"prompt": "the", "n": 100}, 400, "n"),
    ({"prompt": ["the"] * 9, "n": 4}, 400, "--max-batch"),
    ({"prompt": "the", "stop": 5}, 400, "stop"),
    ({"prompt": "the", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"prompt": "the", "stop": [""]}, 400, "stop"),
    ({"prompt": "the", "seed": "x"}, 400, "seed"),
    ({"prompt": "the", "stream": "yes"}, 400, "stream"),
    ({"prompt": "the", "stream": True, "max_tokens": 100}, 400, "maximum context length"),
    ({"prompt": "the", "stream_options": {"include_usage": 1}}, 400, "include_usage"),
    ({"prompt": "the", "logprobs": 5}, 400, "logprobs: Extra inputs are not permitted"),
    ({"prompt": "the", "model": "gpt-4"}, 404, "does not exist"),
    ({"prompt": "the", "model": 3}, 400, "model"),
]


def test_bad_requests_are_4xx_in_openai_shape_never_5xx(chars, wordpiece):
    app = create_app(gpt(chars), tokenizer=chars, name="tiny-gpt", max_batch=32)
    with client(app) as c:
        for body, status, words in BAD_COMPLETIONS:
            if isinstance(body, bytes):
                r = c.post("/v1/completions", content=body, headers={"content-type": "application/json"})
            else:
                r = c.post("/v1/completions", json=body)
            assert r.status_code == status, (body, r.text)
            error = r.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and words in error["message"], (body, error)
            assert error["type"] == "invalid_request_error"
        long = c.post("/v1/completions", json={"prompt": "the dog " * 8, "max_tokens": 20}).json()["error"]
        assert long["message"].startswith("This model's maximum context length is 64 tokens. However, you "
                                          "requested 84 tokens (64 in the prompt, 20 for the completion)")
        assert long["code"] == "context_length_exceeded"
        assert c.post("/v1/completions", content=b"prompt=the",
                      headers={"content-type": "application/x-www-form-urlencoded"}).status_code == 400
        for method, path, status in (("GET", "/v1/completions", 405), ("POST", "/v1/nothing", 404),
                                     ("POST", "/v1/embeddings", 404), ("POST", "/v1/classify", 404),
                                     ("DELETE", "/v1/models", 405)):
            r = c.request(method, path, json={"input": "a"})
            assert r.status_code == status and "message" in r.json()["error"], (method, path, r.text)
        assert c.get("/health").json()["in_flight"] == 0
    assert app.state.server.unexpected_errors == 0
    assert not any(s.labels["status"].startswith("5") for m in app.state.server.metrics.registry.collect()
                   for s in m.samples if m.name == "bigmodels_requests")
    # the other endpoints' bad inputs, on models that answer them
    for app, cases in (
        (create_app(embedder(wordpiece), tokenizer=wordpiece), [
            ("/v1/embeddings", {"input": 5}), ("/v1/embeddings", {"input": []}),
            ("/v1/embeddings", {"input": ["a"] * 3000}), ("/v1/embeddings", {"input": "a", "encoding_format": "hex"}),
            ("/v1/embeddings", {"input": "a", "dimensions": 0}), ("/v1/embeddings", {"input": [["a"]]})]),
        (create_app(text_classifier(wordpiece), tokenizer=wordpiece), [
            ("/v1/classify", {"input": "a", "top_k": 0}), ("/v1/classify", {"input": None}),
            ("/v1/classify", {"input": {"text": "a"}}), ("/v1/classify", {"image": "AAAA"})]),
        (create_app(image_classifier()), [
            ("/v1/classify", {"image": ["!!"]}), ("/v1/classify", {"image": 5}),
            ("/v1/classify", {"image": base64.b64encode(b"\x89PNG\r\n\x1a\n broken").decode()}),
            ("/v1/classify", {"input": "a"})]),
    ):
        with client(app) as c:
            for path, body in cases:
                r = c.post(path, json=body)
                assert 400 <= r.status_code < 500 and r.json()["error"]["message"], (path, body, r.text)
        assert app.state.server.unexpected_errors == 0


def test_body_size_limit_is_413_with_or_without_content_length(chars):
    with client(create_app(gpt(chars), tokenizer=chars, max_body_bytes=2000)) as c:
        assert c.post("/v1/completions", json={"prompt": "the", "max_tokens": 2}).status_code == 200
        big = {"prompt": "the " * 1000}
        r = c.post("/v1/completions", json=big)
        assert r.status_code == 413 and "limit of 2000 bytes" in r.json()["error"]["message"]

        def chunks():  # no Content-Length: the body is counted as it arrives
            for _ in range(10):
                yield b" " * 500

        r = c.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        assert c.get("/health").status_code == 200


def test_api_key_is_401_in_openai_shape_and_health_stays_open(chars):
    with client(create_app(gpt(chars), tokenizer=chars, api_key="s3cret")) as c:
        ask = {"prompt": "the", "max_tokens": 2}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"},
                        {"Authorization": "Basic s3cret"}):
            r = c.post("/v1/completions", json=ask, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", headers
            assert "API key" in r.json()["error"]["message"] and r.headers["www-authenticate"] == "Bearer"
        assert c.get("/v1/models").status_code == 401
        ok = c.post("/v1/completions", json=ask, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert c.get("/health").status_code == 200 and c.get("/metrics").status_code == 200
        assert 'status="401"' in c.get("/metrics").text


def test_cors_is_off_by_default_and_on_for_the_origins_given(chars):
    origin = {"Origin": "http://localhost:3000"}
    with client(create_app(gpt(chars), tokenizer=chars)) as c:
        assert "access-control-allow-origin" not in c.get("/v1/models", headers=origin).headers
    with client(create_app(gpt(chars), tokenizer=chars, cors_origins=["http://localhost:3000"],
                           api_key="k")) as c:
        r = c.get("/health", headers=origin)
        assert r.headers["access-control-allow-origin"] == "http://localhost:3000"
        preflight = c.options("/v1/completions", headers={**origin, "Access-Control-Request-Method": "POST",
                                                          "Access-Control-Request-Headers": "authorization"})
        assert preflight.status_code == 200 and "POST" in preflight.headers["access-control-allow-methods"]
        other = c.get("/health", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_a_request_past_the_timeout_is_504_and_its_worker_stops(chars):
    app = create_app(slowed(gpt(chars), 0.05), tokenizer=chars, timeout_s=0.3, max_concurrency=1)
    with client(app) as c:
        start = time.monotonic()
        r = c.post("/v1/completions", json={"prompt": "the", "max_tokens": 50})
        assert r.status_code == 504 and time.monotonic() - start < 1.5
        assert r.json()["error"]["code"] == "timeout" and "timeout of 0.3 s" in r.json()["error"]["message"]
        deadline = time.monotonic() + 2  # the worker sees the cancel at its next step and frees its slot
        while c.get("/health").json()["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert c.get("/health").json()["in_flight"] == 0
        streamed = c.post("/v1/completions", json={"prompt": "the", "max_tokens": 50, "stream": True})
        assert streamed.status_code == 200 and '"code": null' in streamed.text and "timeout" in streamed.text
        assert streamed.text.endswith("data: [DONE]\n\n")
        assert c.post("/v1/completions", json={"prompt": "the", "max_tokens": 2}).status_code == 200
    assert app.state.server.unexpected_errors == 0


def test_batched_requests_past_the_timeout_are_504_in_the_batch_and_in_the_queue(wordpiece):
    """The timeout covers both waits of a batched request: for admission (the second request, queued behind the
    first) and for its batch (the first); the slots come back and nothing is a 500."""
    app = create_app(slowed(embedder(wordpiece), 1.0), tokenizer=wordpiece, timeout_s=0.25, max_concurrency=1,
                     max_queue=4)
    with client(app) as c, concurrent.futures.ThreadPoolExecutor(2) as pool:
        start = time.monotonic()
        answers = list(pool.map(lambda t: c.post("/v1/embeddings", json={"input": t}), ["a dog runs", "a cat"]))
        assert [r.status_code for r in answers] == [504, 504] and time.monotonic() - start < 0.9
        assert all(r.json()["error"]["code"] == "timeout" for r in answers)
        deadline = time.monotonic() + 2  # the batch still running holds no admission slot once answered
        while c.get("/health").json()["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert c.get("/health").json()["in_flight"] == 0
    assert app.state.server.unexpected_errors == 0


def test_beyond_the_queue_is_429_with_retry_after(chars):
    app = create_app(slowed(gpt(chars), 0.02), tokenizer=chars, max_concurrency=1, max_queue=1)
    with client(app) as c, concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: c.post("/v1/completions", json={"prompt": "the", "max_tokens": 10}),
                                range(4)))
        statuses = sorted(r.status_code for r in answers)
        assert set(statuses) <= {200, 429} and statuses.count(200) >= 2 and 429 in statuses, statuses
        for r in answers:
            if r.status_code == 429:
                assert r.headers["retry-after"] == "1" and r.json()["error"]["type"] == "rate_limit_error"
        assert c.get("/health").json() == {"status": "ok", "model": "gpt2", "in_flight": 0, "queued": 0}


def test_admission_hands_slots_over_in_order_and_forgets_who_gave_up():
    async def main() -> None:
        changes = []
        gate = Admission(1, 1, lambda a, q: changes.append((a, q)))
        await gate.acquire()
        waiter = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        assert (gate.in_flight, gate.queued) == (1, 1)
        with pytest.raises(APIError) as refused:
            await gate.acquire()
        assert refused.value.status == 429 and refused.value.headers == {"Retry-After": "1"}
        gate.release()  # handed to the waiter: still one in flight
        await waiter
        assert (gate.in_flight, gate.queued) == (1, 0)
        quitter = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        quitter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await quitter
        assert gate.queued == 0
        gate.release()
        assert (gate.in_flight, gate.queued) == (0, 0) and changes[-1] == (0, 0)

    asyncio.run(main())
