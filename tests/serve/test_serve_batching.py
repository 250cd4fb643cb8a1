"""Dynamic batching: concurrent requests share model calls (the batch-size histogram sees batches > 1) and get
the vectors and labels they would get one by one."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time

import httpx
import pytest
import torch
from serve_models import TEXTS, client, embedder, text_classifier

from bigmodels.serve import create_app
from bigmodels.serve.batching import Batcher


def _batch_sizes(app, endpoint: str) -> tuple[float, float]:
    """(batches, inputs) the endpoint's model calls had so far."""
    registry = app.state.server.metrics.registry
    count = registry.get_sample_value("bigmodels_batch_size_count", {"endpoint": endpoint}) or 0.0
    total = registry.get_sample_value("bigmodels_batch_size_sum", {"endpoint": endpoint}) or 0.0
    return count, total


def test_batcher_groups_concurrent_requests_and_routes_the_results_back():
    calls: list[tuple[list, dict]] = []
    lock = threading.Lock()

    def double(items, options):
        with lock:
            calls.append((list(items), dict(options)))
        if "boom" in items:
            raise ValueError("boom")
        return [x * 2 * options.get("k", 1) for x in items]

    async def main():
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            sizes = []
            batcher = Batcher(double, max_batch=4, executor=pool, window_s=0.02, on_batch=sizes.append)
            results = await asyncio.gather(batcher.submit([1, 2]), batcher.submit([3]), batcher.submit([4]),
                                           batcher.submit([5, 6, 7, 8, 9]), batcher.submit([10], {"k": 10}))
            assert results == [[2, 4], [6], [8], [10, 12, 14, 16, 18], [200]]
            assert sorted(sizes) == [1, 4, 5]  # [1,2]+[3]+[4] filled a batch; 5 items alone; another lane
            assert not batcher._lanes  # idle lanes are dropped
            with pytest.raises(ValueError, match="boom"):  # an error reaches every request of its batch
                await asyncio.gather(batcher.submit(["boom"]), batcher.submit(["x"]))
            assert await batcher.submit([]) == []

    asyncio.run(main())
    assert {tuple(items) for items, _ in calls} >= {(1, 2, 3, 4), (5, 6, 7, 8, 9), (10,)}


def test_a_request_that_gives_up_while_waiting_is_not_run():
    ran: list = []

    async def main():
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            batcher = Batcher(lambda items, o: ran.extend(items) or items, max_batch=8, executor=pool, window_s=0.05)
            task = asyncio.create_task(batcher.submit(["gone"]))
            await asyncio.sleep(0.01)
            task.cancel()
            assert await batcher.submit(["kept"]) == ["kept"]

    asyncio.run(main())
    assert ran == ["kept"]


def test_a_batch_that_ends_starts_the_next_with_everything_waiting_at_once():
    sizes: list[int] = []

    def slow(items, options):
        time.sleep(0.1)
        return items

    async def main():
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            batcher = Batcher(slow, max_batch=8, executor=pool, window_s=0.5, on_batch=sizes.append)
            start = time.perf_counter()
            first = asyncio.create_task(batcher.submit([1]))  # an idle lane: waits the window, then runs 0.1 s
            await asyncio.sleep(0.52)
            results = await asyncio.gather(first, batcher.submit([2]), batcher.submit([3, 4]))
            return results, time.perf_counter() - start

    results, elapsed = asyncio.run(main())
    assert results == [[1], [2], [3, 4]] and sizes == [1, 3]
    assert elapsed < 0.95, elapsed  # [2] and [3, 4] ran when [1] ended (~0.7 s), not a window after they came


def test_an_idle_lane_starts_without_the_window_once_as_many_inputs_wait_as_its_last_batch_had():
    """Closed-loop clients come back together: when the last batch's count of inputs waits again, nobody else is
    expected, and waiting out the window would only idle the model. Fewer still wait for the window."""
    sizes: list[int] = []

    async def main():
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            batcher = Batcher(lambda items, o: items, max_batch=8, executor=pool, window_s=0.4, on_batch=sizes.append)

            async def phase(*requests):
                start = time.perf_counter()
                results = await asyncio.gather(*(batcher.submit(r) for r in requests))
                return results, time.perf_counter() - start

            first = await phase([1], [2, 3])  # a new lane: the window (0.4 s), then one batch of 3
            back = await phase([4, 5], [6])  # the same 3 inputs' worth back: at once
            fewer = await phase([7], [8])  # 2 < 3: the window again
            other = await batcher.submit([9], {"k": 1})  # another lane has its own history (none: the window)
            return first, back, fewer, other

    first, back, fewer, other = asyncio.run(main())
    assert first[0] == [[1], [2, 3]] and back[0] == [[4, 5], [6]] and fewer[0] == [[7], [8]] and other == [9]
    assert sizes == [3, 3, 2, 1]
    assert first[1] >= 0.35 and fewer[1] >= 0.35, (first[1], fewer[1])
    assert back[1] < 0.3, back[1]


def test_the_servers_embedding_path_gives_the_offline_vectors_and_bills_untruncated_tokens(wordpiece):
    from bigmodels import pipeline
    from bigmodels.serve.loading import embed_encoded, encode_for_embedding

    pipe = pipeline("feature-extraction", embedder(wordpiece), tokenizer=wordpiece, max_length=8)
    texts = [*TEXTS, "the dog runs in the park and the cat sleeps in paris"]  # the last is cut to 8 tokens
    rows, tokens = encode_for_embedding(pipe, texts)
    assert tokens == sum(len(wordpiece.encode(t)) for t in texts) and max(len(ids) for ids, _ in rows) == 8
    vectors = torch.stack(embed_encoded(pipe.model, rows, pipe.model.config.pad_token_id))
    assert torch.allclose(vectors, pipe.embed(texts), atol=1e-6)
    one_by_one = torch.stack([embed_encoded(pipe.model, [row], 0)[0] for row in rows])
    assert torch.allclose(vectors, one_by_one, atol=1e-5)


async def _concurrently(app, path: str, bodies: list[dict]) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        return await asyncio.gather(*(http.post(path, json=b) for b in bodies))


def test_concurrent_embedding_requests_are_batched_with_the_same_vectors(wordpiece):
    app = create_app(embedder(wordpiece), tokenizer=wordpiece, max_batch=16, max_concurrency=16,
                     batch_window_s=0.02)
    texts = [TEXTS[i % len(TEXTS)] + " " + "dog " * (i % 4) for i in range(16)]
    with client(app) as c:
        alone = [c.post("/v1/embeddings", json={"input": t}).json()["data"][0]["embedding"] for t in texts]
    before = _batch_sizes(app, "/v1/embeddings")
    assert before == (16.0, 16.0)  # one at a time: batches of one
    answers = asyncio.run(_concurrently(app, "/v1/embeddings", [{"input": t} for t in texts]))
    assert all(r.status_code == 200 for r in answers)
    batches, inputs = (a - b for a, b in zip(_batch_sizes(app, "/v1/embeddings"), before, strict=True))
    assert inputs == 16 and batches < 16, (batches, inputs)  # some model call embedded several requests
    together = torch.tensor([r.json()["data"][0]["embedding"] for r in answers])
    assert torch.allclose(together, torch.tensor(alone), atol=1e-5)


def test_concurrent_classification_requests_are_batched_per_top_k(wordpiece):
    app = create_app(text_classifier(wordpiece), tokenizer=wordpiece, max_batch=8, max_concurrency=8,
                     batch_window_s=0.02)
    bodies = [{"input": TEXTS[i % len(TEXTS)], "top_k": 1 + i % 2} for i in range(8)]
    with client(app) as c:
        alone = [c.post("/v1/classify", json=b).json()["data"] for b in bodies]
    before = _batch_sizes(app, "/v1/classify")
    answers = asyncio.run(_concurrently(app, "/v1/classify", bodies))
    batches, inputs = (a - b for a, b in zip(_batch_sizes(app, "/v1/classify"), before, strict=True))
    assert inputs == 8 and batches < 8
    for r, expected in zip(answers, alone, strict=True):
        got = r.json()["data"]
        assert [x["label"] for x in got[0]["labels"]] == [x["label"] for x in expected[0]["labels"]]
        assert [x["score"] for x in got[0]["labels"]] == pytest.approx([x["score"] for x in expected[0]["labels"]],
                                                                         abs=1e-5)
