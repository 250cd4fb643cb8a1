"""POST /v1/explain: a text classifier's tokens and words, an image classifier's heatmap (grid and PNG), IG's
completeness gap, 400 for a method that does not apply or a target out of range, the server's limits."""

from __future__ import annotations

import base64
import io
import time

import pytest
import torch
from PIL import Image
from serve_models import client, embedder, image_classifier, slowed, text_classifier

import bigmodels
from bigmodels.serve import create_app

pytest.importorskip("captum", reason="the explain extra (captum) is not installed")


def _png(seed: int = 0) -> str:
    g = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(8, 8, generator=g) * 255).to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


@pytest.fixture(scope="module", params=["module", "directory"])
def text_app(request, wordpiece, tmp_path_factory):
    """The classifier as given, and loaded from a directory: the server's own copy, q/k/v packed and prepared for
    the CPU (oneDNN-packed layers), whose explanations must get the same gradients."""
    if request.param == "module":
        return create_app(text_classifier(wordpiece), tokenizer=wordpiece, api_key="secret")
    directory = bigmodels.save(text_classifier(wordpiece), tmp_path_factory.mktemp("clf"), tokenizer=wordpiece)
    app = create_app(directory, api_key="secret")
    assert {type(m).__name__ for m in app.state.server.served.model.modules() if "Linear" in type(m).__name__} == {
        "PackedLinear"}
    return app


def test_integrated_gradients_of_a_text_give_tokens_words_and_the_completeness_gap(text_app):
    with client(text_app) as c:
        r = c.post("/v1/explain", json={"input": "the dog runs in the park", "method": "ig", "target": 2,
                                        "steps": 64}, headers={"Authorization": "Bearer secret"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["object"], body["modality"], body["method"]) == ("explanation", "text", "ig")
    assert (body["target"], body["target_label"]) == (2, "positive")
    assert body["predicted_label"] in ("negative", "neutral", "positive") and 0 < body["score"] < 1
    assert body["settings"]["steps"] == 64 and body["settings"]["quadrature"] == "gausslegendre"
    tokens = body["tokens"]
    assert [t["token"] for t in tokens][0] == "[CLS]" and tokens[0]["special"] and tokens[-1]["special"]
    assert [w["word"] for w in body["words"]] == "the dog runs in the park".split()
    total = sum(t["attribution"] for t in tokens)
    words = sum(w["attribution"] for w in body["words"])
    assert words == pytest.approx(sum(t["attribution"] for t in tokens if not t["special"]), abs=1e-5)
    assert body["relative_delta"] < 0.01 and abs(body["delta"]) <= 0.01 * max(abs(total), 1e-3) + 1e-4


def test_every_method_that_applies_answers_and_the_others_are_400(text_app):
    headers = {"Authorization": "Bearer secret"}
    with client(text_app) as c:
        for method in ("saliency", "occlusion", "attention"):
            r = c.post("/v1/explain", json={"input": "a cat sleeps", "method": method}, headers=headers)
            assert r.status_code == 200, (method, r.text)
            body = r.json()
            assert body["target"] == body["predicted"] and len(body["tokens"]) == 5 and body["delta"] is None
        for bad, field in (({"method": "gradcam"}, "gradcam"), ({"method": "lime"}, "lime"),
                           ({"method": "nope"}, "nope"), ({"target": 3}, "target=3")):
            r = c.post("/v1/explain", json={"input": "a cat sleeps", **bad}, headers=headers)
            assert r.status_code == 400 and field in r.json()["error"]["message"], r.text
        r = c.post("/v1/explain", json={"input": "a cat sleeps", "method": "saliency", "steps": 8}, headers=headers)
        assert r.status_code == 400 and "steps" in r.json()["error"]["message"]  # not a saliency setting
        for body in ({"image": _png()}, {}, {"input": "a cat", "target": -1}, {"input": "a cat", "steps": 10_000},
                     {"input": ["a", "b"]}):
            assert c.post("/v1/explain", json=body, headers=headers).status_code == 400, body
        assert c.post("/v1/explain", json={"input": "a cat"}).status_code == 401
        assert c.post("/v1/explain", json={"input": "a cat", "model": "other"}, headers=headers).status_code == 404


def test_an_image_explanation_is_a_heatmap_grid_and_a_png():
    app = create_app(image_classifier())
    with client(app) as c:
        for method in ("gradcam", "saliency", "occlusion", "ig"):
            r = c.post("/v1/explain", json={"image": _png(), "method": method, "target": 1,
                                            "png": method == "gradcam"})
            assert r.status_code == 200, (method, r.text)
            body = r.json()
            heat = body["heatmap"]
            assert (body["modality"], body["target"], body["target_label"]) == ("image", 1, "one")
            assert (heat["height"], heat["width"]) == (8, 8) and len(heat["grid"]) == 8 and len(heat["grid"][0]) == 8
            assert ("png" in heat) == (method == "gradcam")
        png = base64.b64decode(c.post("/v1/explain", json={"image": _png(), "method": "gradcam"}).json()
                               ["heatmap"]["png"])
        assert Image.open(io.BytesIO(png)).format == "PNG"
        r = c.post("/v1/explain", json={"image": _png(), "method": "occlusion", "window": 2, "stride": 2})
        assert r.json()["settings"] | {"window": 2, "stride": 2} == r.json()["settings"]
        assert c.post("/v1/explain", json={"image": _png(), "method": "attention"}).status_code == 400
        assert c.post("/v1/explain", json={"input": "a text"}).status_code == 400
        assert c.post("/v1/explain", json={"image": "not base64!"}).status_code == 400
        assert c.post("/v1/explain", json={"image": _png(), "target": 3}).status_code == 400
    assert app.state.server.unexpected_errors == 0


def test_explanations_leave_the_served_model_alone_and_obey_the_timeout(wordpiece):
    model = text_classifier(wordpiece)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    app = create_app(model, tokenizer=wordpiece, timeout_s=0.3)
    with client(app) as c:
        assert c.post("/v1/explain", json={"input": "a cat sleeps", "method": "attention"}).status_code == 200
        assert not model._forward_hooks and not model._forward_pre_hooks
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
        slowed(app.state.server.explainer._copy, 0.5)  # the explanation's own copy, not the served model
        assert c.post("/v1/classify", json={"input": "a cat"}).status_code == 200
        r = c.post("/v1/explain", json={"input": "a cat sleeps", "method": "saliency"})
        assert r.status_code == 504 and "timeout" in r.json()["error"]["message"]
        time.sleep(0.8)  # the stopped explanation's thread ends before the client's event loop closes


def test_a_stopped_explanation_ends_at_the_next_forward_and_frees_the_copy(wordpiece):
    # a request that timed out (cancel set) must not keep the explainer's copy busy for the requests behind it
    import threading

    from bigmodels.serve.explaining import Explainer, ExplanationStopped

    explainer = Explainer(text_classifier(wordpiece), wordpiece)
    explainer.run("a cat sleeps", "ig", target=None, settings={})  # makes the copy
    cancel, forwards = threading.Event(), []

    def timed_out_during_the_first_forward(module, args):
        forwards.append(1)
        cancel.set()

    hook = explainer._copy.register_forward_pre_hook(timed_out_during_the_first_forward)
    with pytest.raises(ExplanationStopped):
        explainer.run("a cat sleeps on the mat", "ig", target=None, settings={"steps": 64}, cancel=cancel)
    hook.remove()
    assert len(forwards) == 1  # IG alone takes several forward passes; the stop came at the second
    assert not explainer._lock.locked() and len(explainer._copy._forward_pre_hooks) == 0
    assert explainer.run("a cat sleeps", "saliency", target=None, settings={}, cancel=threading.Event())["tokens"]

    explainer._lock.acquire()  # another explanation runs: a stopped request stops waiting for it
    try:
        stopped = threading.Event()
        stopped.set()
        start = time.monotonic()
        with pytest.raises(ExplanationStopped, match="while another explanation ran"):
            explainer.run("a cat", "saliency", target=None, settings={}, cancel=stopped)
        assert time.monotonic() - start < 1.0
    finally:
        explainer._lock.release()


def test_an_embedding_model_explains_by_attention_only(wordpiece):
    with client(create_app(embedder(wordpiece), tokenizer=wordpiece)) as c:
        r = c.post("/v1/explain", json={"input": "a cat sleeps", "method": "attention"})
        assert r.status_code == 200 and r.json()["score"] is None and r.json()["predicted"] == -1, r.text
        r = c.post("/v1/explain", json={"input": "a cat sleeps", "method": "ig"})
        assert r.status_code == 400 and "attention" in r.json()["error"]["message"]
