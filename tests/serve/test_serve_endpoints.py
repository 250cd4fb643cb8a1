"""Every endpoint through FastAPI's TestClient on tiny models: the answers equal the pipelines', in OpenAI's
shapes; the models load from every source the server takes."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from serve_models import TEXTS, client, embedder, gpt, image_classifier, text_classifier

import bigmodels
from bigmodels.data.tokenizers import Tokenizer
from bigmodels.errors import BigModelsError, ConfigError
from bigmodels.infer.embed import embed_texts
from bigmodels.infer.pipelines import pipeline
from bigmodels.nn import kernels
from bigmodels.serve import create_app
from bigmodels.testing import tiny_model


@pytest.fixture(scope="module")
def lm(chars):
    model = gpt(chars)
    with client(create_app(model, tokenizer=chars, name="tiny-gpt")) as c:
        yield c, model


def _greedy(model, tok, prompt: str, n: int) -> str:
    pipe = pipeline("text-generation", model, tokenizer=tok, temperature=0, max_new_tokens=n, return_full_text=False)
    return pipe(prompt)[0]["generated_text"]


def _events(text: str) -> list:
    """The data of each server-sent event; the last must be [DONE]."""
    data = [line[len("data: "):] for line in text.split("\n\n") if line.startswith("data: ")]
    assert data[-1] == "[DONE]" and text.endswith("data: [DONE]\n\n")
    return [json.loads(d) for d in data[:-1]]


def test_completions_match_the_pipeline_with_openai_fields_and_usage(lm, chars):
    c, model = lm
    r = c.post("/v1/completions", json={"model": "tiny-gpt", "prompt": "the dog", "max_tokens": 10, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == "tiny-gpt" and body["id"].startswith("cmpl-")
    assert isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice == {"text": _greedy(model, chars, "the dog", 10), "index": 0, "logprobs": None,
                      "finish_reason": "length"}
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 10, "total_tokens": 17}
    # several prompts x n: choice i is prompt i // n; greedy gives each prompt its own continuation
    r = c.post("/v1/completions", json={"prompt": ["the dog", "a fox jumps"], "n": 2, "max_tokens": 6,
                                        "temperature": 0}).json()
    assert [ch["index"] for ch in r["choices"]] == [0, 1, 2, 3]
    assert [ch["text"] for ch in r["choices"]] == [_greedy(model, chars, "the dog", 6)] * 2 + [
        _greedy(model, chars, "a fox jumps", 6)] * 2
    assert r["usage"] == {"prompt_tokens": 7 + 11, "completion_tokens": 24, "total_tokens": 42}
    echoed = c.post("/v1/completions", json={"prompt": "the dog", "max_tokens": 4, "temperature": 0,
                                             "echo": True}).json()
    assert echoed["choices"][0]["text"] == "the dog" + _greedy(model, chars, "the dog", 4)
    # greedy requests picked their tokens through the server's shared float16 screen where the kernels are built
    greedy = c.app.state.server.greedy
    assert greedy is not None and greedy.model is model and greedy.greedy_screen
    assert (greedy._screen is not None) is kernels.available()


def test_sampling_follows_the_seed_and_each_request_has_its_own_state(lm):
    c, _ = lm
    ask = {"prompt": "the", "max_tokens": 12, "temperature": 1.0, "top_p": 0.9, "n": 3, "seed": 7}
    first = [ch["text"] for ch in c.post("/v1/completions", json=ask).json()["choices"]]
    assert [ch["text"] for ch in c.post("/v1/completions", json=ask).json()["choices"]] == first
    assert len(set(first)) > 1  # the n choices sample apart
    other = [ch["text"] for ch in c.post("/v1/completions", json={**ask, "seed": 8}).json()["choices"]]
    assert other != first
    # requests in flight together decode exactly as one at a time: no cache or random stream is shared
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda s: c.post("/v1/completions", json={**ask, "seed": s}).json(), [7, 8, 7, 8]))
    assert [[ch["text"] for ch in a["choices"]] for a in answers] == [first, other, first, other]


def test_stop_strings_end_a_choice_and_are_left_out(lm):
    c, _ = lm
    ask = {"prompt": "quick", "max_tokens": 24, "temperature": 1.0, "seed": 5}
    full = c.post("/v1/completions", json=ask).json()["choices"][0]["text"]
    stop = next(full[k:k + 2] for k in range(3, 20) if full.find(full[k:k + 2]) >= 3)
    expected = full[:full.find(stop)]  # a seed draws the same tokens: the stop only ends the text
    r = c.post("/v1/completions", json={**ask, "stop": [stop, "ZZ"]})
    choice = r.json()["choices"][0]
    assert choice["text"] == expected and choice["finish_reason"] == "stop" and len(expected) >= 3
    assert r.json()["usage"]["completion_tokens"] == len(expected) + 2  # the tokens of the stop were generated
    streamed = c.post("/v1/completions", json={**ask, "stop": stop, "stream": True})
    events = _events(streamed.text)
    assert "".join(e["choices"][0]["text"] for e in events) == expected  # the stop is held back, never sent
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


def test_streaming_sends_the_same_text_as_events_ending_with_done(lm):
    c, _ = lm
    ask = {"prompt": ["the dog", "a cat"], "max_tokens": 9, "n": 2, "seed": 3, "temperature": 0.8}
    whole = c.post("/v1/completions", json=ask).json()
    with c.stream("POST", "/v1/completions", json={**ask, "stream": True,
                                                   "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    events = _events(text)
    texts = [""] * 4
    finish = [None] * 4
    for event in events:
        assert event["object"] == "text_completion" and event["id"] == events[0]["id"]
        for ch in event["choices"]:
            texts[ch["index"]] += ch["text"]
            finish[ch["index"]] = ch["finish_reason"] or finish[ch["index"]]
    assert texts == [ch["text"] for ch in whole["choices"]]
    assert finish == ["length"] * 4
    assert events[-1]["choices"] == [] and events[-1]["usage"] == whole["usage"]
    assert len(events) > 4 * 2  # piece by piece, not one chunk


def test_embeddings_in_openai_shape_float_and_base64(wordpiece):
    model = embedder(wordpiece)
    with client(create_app(model, tokenizer=wordpiece, name="tiny-bert")) as c:
        r = c.post("/v1/embeddings", json={"model": "tiny-bert", "input": TEXTS})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "list" and body["model"] == "tiny-bert"
        assert [d["index"] for d in body["data"]] == list(range(len(TEXTS)))
        assert all(d["object"] == "embedding" and len(d["embedding"]) == 32 for d in body["data"])
        expected = embed_texts(model, wordpiece, TEXTS, max_length=64)
        assert torch.allclose(torch.tensor([d["embedding"] for d in body["data"]]), expected, atol=1e-5)
        tokens = sum(len(wordpiece.encode(t)) for t in TEXTS)
        assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
        packed = c.post("/v1/embeddings", json={"input": TEXTS[1], "encoding_format": "base64"}).json()
        vector = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), dtype="<f4")
        assert np.allclose(vector, expected[1].numpy(), atol=1e-5)
        assert c.post("/v1/embeddings", json={"input": "a cat", "dimensions": 32}).status_code == 200
        wrong = c.post("/v1/embeddings", json={"input": "a cat", "dimensions": 8})
        assert wrong.status_code == 400 and "32 dimensions" in wrong.json()["error"]["message"]
        unknown = c.post("/v1/embeddings", json={"model": "gpt-4", "input": "a cat"})
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
        assert "tiny-bert" in unknown.json()["error"]["message"]


def _png(seed: int, size=(8, 8)) -> tuple[Image.Image, str]:
    image = Image.fromarray((np.random.default_rng(seed).random(size) * 255).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return image, base64.b64encode(buffer.getvalue()).decode()


def test_classify_texts_and_images_as_the_pipelines_do(wordpiece):
    model = text_classifier(wordpiece)
    reference = pipeline("text-classification", model, tokenizer=wordpiece, top_k=2)
    with client(create_app(model, tokenizer=wordpiece)) as c:
        r = c.post("/v1/classify", json={"input": TEXTS[:3], "top_k": 2})
        assert r.status_code == 200, r.text
        rows = r.json()["data"]
        for row, text in zip(rows, TEXTS[:3], strict=True):
            ranked = reference(text)
            assert [x["label"] for x in row["labels"]] == [x["label"] for x in ranked]
            assert [x["score"] for x in row["labels"]] == pytest.approx([x["score"] for x in ranked], abs=1e-5)
            assert row["label"] == ranked[0]["label"]
        one = c.post("/v1/classify", json={"input": "a cat"}).json()["data"]
        assert len(one) == 1 and len(one[0]["labels"]) == 1
        wrong = c.post("/v1/classify", json={"image": _png(0)[1]})
        assert wrong.status_code == 400 and "send input" in wrong.json()["error"]["message"]
    vision = image_classifier()
    reference = pipeline("image-classification", vision, top_k=3)
    with client(create_app(vision)) as c:
        images = [_png(i) for i in range(3)]
        data = [b64 for _, b64 in images]
        data[1] = "data:image/png;base64," + data[1]  # a data URL, as a browser's FileReader gives
        r = c.post("/v1/classify", json={"image": data, "top_k": 3})
        assert r.status_code == 200, r.text
        for row, (image, _) in zip(r.json()["data"], images, strict=True):
            expected = reference(image)
            assert [x["label"] for x in row["labels"]] == [x["label"] for x in expected]
            assert [x["score"] for x in row["labels"]] == pytest.approx([x["score"] for x in expected], abs=1e-5)
        for bad, words in (("%%%", "not valid base64"), (base64.b64encode(b"not an image").decode(), "not an image"),
                           ("", "not an image")):
            r = c.post("/v1/classify", json={"image": [images[0][1], bad]})
            assert r.status_code == 400 and "image[1]" in r.json()["error"]["message"], r.text
            assert words in r.json()["error"]["message"]
        both = c.post("/v1/classify", json={"image": data[0], "input": "a cat"})
        assert both.status_code == 400 and "exactly one of" in both.json()["error"]["message"]
        assert c.post("/v1/classify", json={}).status_code == 400


def test_translate_as_the_pipeline_does():
    from bigmodels.data.parallel import seq2seq_token_ids

    bpe = Tokenizer.train_bpe(["a dog runs in the park", "ein hund rennt im park", "the cat sleeps",
                               "die katze schläft"] * 20, vocab_size=300)
    ids = seq2seq_token_ids(bpe)
    torch.manual_seed(0)
    model = tiny_model("transformer_mini", src_vocab_size=bpe.vocab_size, tgt_vocab_size=bpe.vocab_size,
                       pad_token_id=ids["pad_token_id"], bos_token_id=ids["bos_token_id"],
                       eos_token_id=ids["eos_token_id"]).eval()
    texts = ["a dog runs in the park", "", "the cat sleeps"]
    expected = pipeline("translation", model, tokenizer=bpe, num_beams=2, max_new_tokens=6)(texts)
    with client(create_app(model, tokenizer=bpe)) as c:
        r = c.post("/v1/translate", json={"input": texts, "num_beams": 2, "max_tokens": 6})
        assert r.status_code == 200, r.text
        assert [d["translation_text"] for d in r.json()["data"]] == [e["translation_text"] for e in expected]
        assert [d["index"] for d in r.json()["data"]] == [0, 1, 2]
        assert c.post("/v1/translate", json={"input": "a dog", "num_beams": 0}).status_code == 400
        assert c.post("/v1/completions", json={"prompt": "a dog"}).status_code == 404


def test_models_health_metrics_and_the_root(lm):
    c, _ = lm
    models = c.get("/v1/models").json()
    assert models["object"] == "list"
    (card,) = models["data"]
    assert card["id"] == "tiny-gpt" and card["object"] == "model" and card["owned_by"] == "bigmodels"
    assert card["endpoints"] == ["/v1/completions"] and card["context_length"] == 64
    health = c.get("/health").json()
    assert health["status"] == "ok" and health["in_flight"] == 0 and health["queued"] == 0
    registry = c.app.state.server.metrics.registry
    before = registry.get_sample_value("bigmodels_generated_tokens_total") or 0.0
    c.post("/v1/completions", json={"prompt": "the", "max_tokens": 3})
    assert registry.get_sample_value("bigmodels_generated_tokens_total") == before + 3
    text = c.get("/metrics").text
    assert 'bigmodels_requests_total{endpoint="/v1/completions",status="200"}' in text
    assert "bigmodels_request_latency_seconds_bucket" in text and "bigmodels_prompt_tokens_total" in text
    assert 'bigmodels_model_seconds_count{endpoint="/v1/completions"}' in text
    assert "bigmodels_queue_depth 0.0" in text and "bigmodels_requests_in_flight 0.0" in text
    root = c.get("/")
    assert root.status_code == 200
    if root.headers["content-type"].startswith("application/json"):  # no web page shipped: the endpoint index
        assert "/v1/completions" in root.json()["endpoints"]


def test_served_from_a_directory_a_hugging_face_directory_and_a_state_dict(chars, wordpiece, tmp_path):
    model = gpt(chars)
    bigmodels.save(model, tmp_path / "gpt", tokenizer=chars)
    bigmodels.save(model, tmp_path / "hf", format="hf", tokenizer=chars)
    expected = _greedy(model, chars, "the", 12)
    for path in (tmp_path / "gpt", tmp_path / "hf"):
        app = create_app(path)
        assert app.state.server.served.name == path.name
        # the server's own copy is prepared for CPU decoding (oneDNN-packed weights, column-major for a step's rows)
        layers = {type(m).__name__ for m in app.state.server.served.model.modules() if "Linear" in type(m).__name__}
        assert layers == {"PackedLinear"}
        with client(app) as c:
            r = c.post("/v1/completions", json={"model": path.name, "prompt": "the", "max_tokens": 12,
                                                "temperature": 0})
            assert r.status_code == 200 and r.json()["choices"][0]["text"] == expected, r.text
            r = c.post("/v1/explain", json={"input": "the dog", "method": "saliency"})  # gradients through them
            assert r.status_code == 200 and any(t["attribution"] != 0 for t in r.json()["tokens"]), r.text
    bigmodels.save(embedder(wordpiece), tmp_path / "emb", tokenizer=wordpiece)
    app = create_app(tmp_path / "emb")
    assert all(m.qkv_packed for m in app.state.server.served.model.modules() if hasattr(m, "qkv_packed"))
    torch.save(bigmodels.create_model("cnn_small").state_dict(), tmp_path / "cnn.pth")
    with client(create_app(tmp_path / "cnn.pth", architecture="cnn_small")) as c:
        assert c.get("/v1/models").json()["data"][0]["id"] == "cnn_small"
        r = c.post("/v1/classify", json={"image": _png(1)[1]})
        assert r.status_code == 200 and r.json()["data"][0]["label"].startswith("class "), r.text


def test_what_cannot_be_served_fails_at_start_with_a_typed_error(wordpiece, tmp_path):
    with pytest.raises(ConfigError, match="needs the model's tokenizer"):
        create_app(tiny_model("gpt2"))
    with pytest.raises(ConfigError, match="no endpoint serves"):
        create_app(tiny_model("bert-base", vocab_size=wordpiece.vocab_size, head="mlm"), tokenizer=wordpiece)
    with pytest.raises(BigModelsError):  # an ONNX export goes to the ONNX Runtime backend of the pipelines
        create_app(tmp_path / "missing.onnx")
    for bad in ({"max_batch": 0}, {"max_concurrency": True}, {"max_queue": -1}, {"timeout_s": 0},
                {"timeout_s": float("nan")}, {"max_body_bytes": 1.5}, {"api_key": " "}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            create_app(image_classifier(), **bad)


def test_an_onnx_export_is_served_by_onnx_runtime(wordpiece, tmp_path):
    pytest.importorskip("onnxruntime", reason="the export extra (onnxruntime) is not installed")
    pytest.importorskip("onnxscript", reason="the export extra (onnxscript) is not installed")
    from bigmodels.export.onnx import export_onnx

    model = embedder(wordpiece)
    export_onnx(model, tmp_path / "emb", tokenizer=wordpiece)
    app = create_app(tmp_path / "emb")
    served = app.state.server.served
    assert served.name == "emb" and getattr(served.model, "backend", None) == "onnxruntime"
    with client(app) as c:
        r = c.post("/v1/embeddings", json={"input": TEXTS})
        assert r.status_code == 200, r.text
        vectors = torch.tensor([d["embedding"] for d in r.json()["data"]])
        assert torch.allclose(vectors, embed_texts(model, wordpiece, TEXTS, max_length=64), atol=1e-4)
    with pytest.raises(ConfigError, match="ONNX export carries its own graph"):
        create_app(tmp_path / "emb" / "model.onnx", architecture="bert-base")
