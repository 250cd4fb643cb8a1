"""The web page at ``/`` in a real headless Chromium (Playwright's sync API driving Debian's ``chromium``) against a
live uvicorn server on 127.0.0.1: text generated through the page streams in and equals the greedy pipeline's, the
API key field and the server's error messages work, text and image classification and sentence similarity show
the pipelines' numbers, explanations draw as coloured words (the attributions of ``bigmodels.explain.explain``) and
as a heatmap over the uploaded image, and each panel shows only for a model that answers its endpoint. Each test
keeps a screenshot under its ``tmp_path`` and prints where (the ``browser`` and ``page`` fixtures are in conftest).
"""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from PIL import Image
from serve_models import TEXTS, embedder, gpt, image_classifier, live_server, rgba, slowed, text_classifier

from bigmodels.infer.pipelines import pipeline
from bigmodels.serve import create_app
from bigmodels.serve.app import STATIC

try:
    from playwright.sync_api import expect
except ImportError:  # the browser tests skip (conftest's ``browser``); the page's files are still checked
    expect = None
if TYPE_CHECKING:
    from playwright.sync_api import Page

PANELS = ("generate", "classify", "similarity", "translate")


def _open(page: Page, base: str, shown: str) -> None:
    """Load the page and wait until it has asked the server for the model; only the ``shown`` panel is visible."""
    page.goto(f"{base}/")
    _open_ready(page, shown)


def _open_ready(page: Page, shown: str) -> None:
    expect(page.locator("#model")).to_have_attribute("data-state", "ready")
    for name in PANELS:
        expect(page.locator(f"#panel-{name}")).to_be_visible() if name == shown else expect(
            page.locator(f"#panel-{name}")).to_be_hidden()


def _bars(page: Page, list_id: str) -> list[tuple[str, str]]:
    rows = page.locator(f"#{list_id} li")
    return [(rows.nth(i).locator(".label").inner_text(), rows.nth(i).locator(".score").inner_text())
            for i in range(rows.count())]


def test_the_page_streams_a_generation_with_the_api_key_and_shows_errors(chars, page):
    model = gpt(chars)
    prompt, steps = "the dog", 12
    expected = pipeline("text-generation", model, tokenizer=chars, temperature=0, max_new_tokens=steps,
                        return_full_text=False)(prompt)[0]["generated_text"]
    slowed(model, 0.03)  # tokens arrive over ~0.4 s: the page shows them while the stream is still open
    app = create_app(model, tokenizer=chars, name="tiny-gpt", api_key="k3y")
    with live_server(app) as base:
        page.goto(f"{base}/")
        expect(page.locator("#model")).to_have_attribute("data-state", "error")
        expect(page.locator("#connect-error")).to_contain_text("401 · No API key provided")
        expect(page.locator("#panel-generate")).to_be_hidden()

        page.fill("#api-key", "k3y")
        page.click("#connect")
        expect(page.locator("#model")).to_have_attribute("data-state", "ready")
        expect(page.locator("#model-name")).to_have_text("tiny-gpt")
        expect(page.locator("#model-meta")).to_contain_text("context 64 tokens")
        expect(page.locator("#connect-error")).to_be_hidden()
        for name in PANELS:
            expect(page.locator(f"#panel-{name}")).to_be_visible() if name == "generate" else expect(
                page.locator(f"#panel-{name}")).to_be_hidden()

        page.fill("#gen-prompt", "the")
        page.fill("#gen-max-tokens", "100")
        page.click("#gen-run")
        expect(page.locator("#gen-error")).to_contain_text("400 · ")
        expect(page.locator("#gen-error")).to_contain_text("maximum context length is 64")
        expect(page.locator("#gen-status")).to_have_attribute("data-state", "error")

        page.fill("#gen-prompt", prompt)
        page.fill("#gen-max-tokens", str(steps))
        page.fill("#gen-temperature", "0")
        page.fill("#gen-top-p", "1")
        page.click("#gen-run")
        page.wait_for_function("""() => Number(document.getElementById('gen-output').dataset.chunks) > 0
            && document.getElementById('gen-status').dataset.state === 'streaming'""")  # text before the end
        expect(page.locator("#gen-status")).to_have_attribute("data-state", "done")
        expect(page.locator("#gen-error")).to_be_hidden()
        assert page.locator("#gen-completion").text_content() == expected
        assert page.locator("#gen-echo").text_content() == prompt
        assert int(page.locator("#gen-output").get_attribute("data-chunks")) >= 2
        expect(page.locator("#gen-status")).to_contain_text(f"{steps} tokens in")
        expect(page.locator("#gen-status")).to_contain_text("max tokens reached")
        expect(page.locator("#gen-run")).to_be_enabled()
        expect(page.locator("#gen-stop")).to_be_disabled()

        page.fill("#gen-max-tokens", "50")  # ~1.5 s of tokens: Stop ends the stream early
        page.click("#gen-run")
        page.wait_for_function("() => Number(document.getElementById('gen-output').dataset.chunks) > 0")
        page.click("#gen-stop")
        expect(page.locator("#gen-status")).to_have_attribute("data-state", "stopped")
        assert len(page.locator("#gen-completion").text_content()) < 50
        expect(page.locator("#gen-error")).to_be_hidden()
    assert app.state.server.unexpected_errors == 0


def test_the_page_classifies_a_text_as_the_pipeline_does(wordpiece, page):
    model = text_classifier(wordpiece)
    text = "the dog runs in the park"
    expected = pipeline("text-classification", model, tokenizer=wordpiece, top_k=3)(text)
    with live_server(create_app(model, tokenizer=wordpiece, name="tiny-classifier")) as base:
        _open(page, base, "classify")
        expect(page.locator("#cls-text")).to_be_visible()
        expect(page.locator("#cls-image")).to_be_hidden()
        page.fill("#cls-text", text)
        page.fill("#cls-top-k", "0")
        page.click("#cls-run")
        expect(page.locator("#cls-error")).to_contain_text("400 · top_k")
        page.fill("#cls-top-k", "3")
        page.click("#cls-run")
        expect(page.locator("#cls-results")).to_have_attribute("data-state", "done")
        expect(page.locator("#cls-error")).to_be_hidden()
        assert _bars(page, "cls-results") == [(r["label"], f"{r['score']:.3f}") for r in expected]
        assert {label for label, _ in _bars(page, "cls-results")} == {"negative", "neutral", "positive"}


def test_the_page_classifies_an_uploaded_image(page, tmp_path):
    model = image_classifier()
    image = Image.fromarray((np.random.default_rng(0).random((8, 8)) * 255).astype(np.uint8))
    path = tmp_path / "digit.png"
    image.save(path)
    expected = pipeline("image-classification", model, top_k=2)(Image.open(io.BytesIO(path.read_bytes())))
    with live_server(create_app(model)) as base:
        _open(page, base, "classify")
        expect(page.locator("#cls-text")).to_be_hidden()
        page.click("#cls-run")
        expect(page.locator("#cls-error")).to_contain_text("choose an image file first")
        page.set_input_files("#cls-image", path)
        expect(page.locator("#cls-preview")).to_be_visible()
        page.fill("#cls-top-k", "2")
        page.click("#cls-run")
        expect(page.locator("#cls-results")).to_have_attribute("data-state", "done")
        assert _bars(page, "cls-results") == [(r["label"], f"{r['score']:.3f}") for r in expected]


def test_the_page_ranks_sentences_by_the_cosine_of_their_embeddings(wordpiece, page):
    model = embedder(wordpiece)
    source, candidates = TEXTS[0], TEXTS[1:]
    vectors = torch.tensor(pipeline("feature-extraction", model, tokenizer=wordpiece)([source, *candidates]))
    cosines = torch.nn.functional.cosine_similarity(vectors[:1], vectors[1:]).tolist()
    expected = sorted(zip(candidates, cosines, strict=True), key=lambda row: -row[1])
    with live_server(create_app(model, tokenizer=wordpiece)) as base:
        _open(page, base, "similarity")
        page.fill("#sim-source", source)
        page.fill("#sim-candidates", "\n".join(candidates))
        page.click("#sim-run")
        expect(page.locator("#sim-results")).to_have_attribute("data-state", "done")
        assert _bars(page, "sim-results") == [(text, f"{value:.3f}") for text, value in expected]


FOR, AGAINST, MAX_ALPHA = (220, 40, 40), (40, 90, 220), 0.85  # the page's colours (app.js)


def test_the_page_explains_a_text_with_words_coloured_by_their_attributions(wordpiece, page):
    pytest.importorskip("captum", reason="the explain extra (captum) is not installed")
    from bigmodels.explain import explain

    model = text_classifier(wordpiece)
    text = "the dog runs in the park"
    expected = {m: explain(model, text, m, tokenizer=wordpiece) for m in ("ig", "saliency")}
    app = create_app(model, tokenizer=wordpiece, name="tiny-classifier", api_key="k3y")
    with live_server(app) as base:
        page.goto(f"{base}/")
        page.fill("#api-key", "k3y")  # /v1/explain is asked with the key of the field
        page.click("#connect")
        _open_ready(page, "classify")
        expect(page.locator("#exp-form")).to_be_visible()
        offered = page.locator("#exp-method option").evaluate_all("options => options.map(o => o.value)")
        assert offered == app.state.server.explainer.methods() == ["saliency", "ig", "occlusion", "attention"]
        assert page.input_value("#exp-method") == "ig"  # integrated gradients by default for a text

        page.fill("#cls-text", text)
        page.fill("#exp-target", "3")
        page.click("#exp-run")
        expect(page.locator("#exp-error")).to_contain_text("400 · ")
        expect(page.locator("#exp-error")).to_contain_text("target=3")
        expect(page.locator("#exp-output")).to_have_attribute("data-state", "error")
        page.fill("#exp-target", "")
        for method in ("saliency", "ig"):  # integrated gradients last: its red and blue words in the screenshot
            e = expected[method]
            page.select_option("#exp-method", method)
            page.click("#exp-run")
            expect(page.locator("#exp-output")).to_have_attribute("data-state", "done")
            expect(page.locator("#exp-error")).to_be_hidden()
            spans = page.locator("#exp-words .tok")
            assert spans.all_inner_texts() == e.words == text.split()
            shown = spans.evaluate_all("""spans => spans.map(s => ({value: Number(s.dataset.attribution),
                title: Number(s.title), colour: getComputedStyle(s).backgroundColor}))""")
            values = e.word_attributions.tolist()
            assert [s["value"] for s in shown] == pytest.approx(values, rel=1e-4, abs=1e-6), method
            scale = max(abs(v) for v in values)
            for s, v in zip(shown, values, strict=True):
                assert s["title"] == pytest.approx(v, rel=1e-3)  # the tooltip: 4 significant digits
                r, g, b, a = rgba(s["colour"])
                assert (r, g, b) == (FOR if v >= 0 else AGAINST) and a == pytest.approx(MAX_ALPHA * abs(v) / scale,
                                                                                        abs=0.01)
            assert max(rgba(s["colour"])[3] for s in shown) == pytest.approx(MAX_ALPHA, abs=0.01)
            summary = page.locator("#exp-summary")
            name = {"ig": "integrated gradients", "saliency": "saliency"}[method]
            expect(summary).to_contain_text(f"{name} for {e.target_label} (class {e.target})")
            expect(summary).to_contain_text(f"predicted {e.predicted_label} (class {e.predicted}) (p = {e.score:.3f})")
            if method == "ig":
                expect(summary).to_contain_text("completeness gap")
            expect(page.locator("#exp-legend")).to_contain_text(f"red: evidence for {e.target_label}")
    assert app.state.server.unexpected_errors == 0


_CELLS = """() => {
    // the alpha and colour of each canvas at the centre of every cell of the (H, W) grid the server sent
    const grid = (id, h, w) => {
        const c = document.getElementById(id);
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const rows = [];
        for (let y = 0; y < h; y++) {
            const row = [];
            for (let x = 0; x < w; x++) {
                const px = Math.floor((x + 0.5) * c.width / w), py = Math.floor((y + 0.5) * c.height / h);
                const i = 4 * (py * c.width + px);
                row.push([d[i], d[i + 1], d[i + 2], d[i + 3]]);
            }
            rows.push(row);
        }
        let drawn = 0;
        for (let i = 3; i < d.length; i += 4) drawn += d[i] > 0;
        return {rows, drawn, size: [c.width, c.height]};
    };
    return {heat: grid('exp-heat', 8, 8), base: grid('exp-base', 8, 8)};
}"""


def test_the_page_draws_an_image_explanation_over_the_upload(page, tmp_path):
    pytest.importorskip("captum", reason="the explain extra (captum) is not installed")
    from bigmodels.explain import explain

    model = image_classifier()
    pixels = (np.random.default_rng(1).random((8, 8)) * 255).astype(np.uint8)
    path = tmp_path / "digit.png"
    Image.fromarray(pixels).save(path)
    with live_server(create_app(model)) as base:
        _open(page, base, "classify")
        assert page.input_value("#exp-method") == "gradcam"  # Grad-CAM by default for an image
        page.click("#exp-run")
        expect(page.locator("#exp-error")).to_contain_text("choose an image file first")
        page.set_input_files("#cls-image", path)
        for method in ("gradcam", "ig"):
            e = explain(model, Image.open(path), method)
            heat = e.heatmap()
            page.select_option("#exp-method", method)
            page.click("#exp-run")
            expect(page.locator("#exp-output")).to_have_attribute("data-state", "done")
            expect(page.locator("#exp-image")).to_be_visible()
            expect(page.locator("#exp-error")).to_be_hidden()
            expect(page.locator("#exp-summary")).to_contain_text(
                f"{'Grad-CAM' if method == 'gradcam' else 'integrated gradients'} for {e.target_label}")
            drawn = page.evaluate(_CELLS)
            assert drawn["heat"]["size"] == drawn["base"]["size"] == [256, 256]
            assert drawn["heat"]["drawn"] > 256 * 256 // 2, "the overlay is (mostly) transparent"
            # the image under the overlay is the upload, pixel for pixel (grey: r = g = b)
            assert [[px[0] for px in row] for row in drawn["base"]["rows"]] == pixels.tolist()
            scale = float(heat.abs().max())
            for y in range(8):
                for x in range(8):
                    v = float(heat[y, x])
                    r, g, b, a = drawn["heat"]["rows"][y][x]
                    assert a == pytest.approx(255 * MAX_ALPHA * abs(v) / scale, abs=10), (method, y, x)
                    if a > 80:  # the colour of a faint pixel is rounded away
                        want = FOR if v >= 0 else AGAINST
                        assert max(abs(c - w) for c, w in zip((r, g, b), want, strict=True)) <= 12, (y, x)
            if method == "ig":
                assert (heat < 0).any() and (heat > 0).any()  # both colours were drawn
        page.set_input_files("#cls-image", [])
        expect(page.locator("#exp-image")).to_be_hidden()  # a new upload clears the old explanation
        page.set_input_files("#cls-image", path)
        page.click("#exp-run")  # integrated gradients again, for the screenshot
        expect(page.locator("#exp-image")).to_be_visible()


def test_the_models_card_lists_the_explanation_methods_and_an_image_its_region(wordpiece):
    pytest.importorskip("captum", reason="the explain extra (captum) is not installed")
    from serve_models import client

    for app, methods in ((create_app(text_classifier(wordpiece), tokenizer=wordpiece),
                          ["saliency", "ig", "occlusion", "attention"]),
                         (create_app(embedder(wordpiece), tokenizer=wordpiece), ["attention"]),
                         (create_app(image_classifier()), ["saliency", "ig", "gradcam", "occlusion"])):
        with client(app) as c:
            assert c.get("/v1/models").json()["data"][0]["explain_methods"] == methods
    buf = io.BytesIO()
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(buf, "PNG")  # 16 wide, 12 high
    image = base64.b64encode(buf.getvalue()).decode("ascii")
    plain, cropped = image_classifier(), image_classifier()
    cropped.info.meta["resize_size"] = 10  # shorter side to 10 (16 x 12 -> 13 x 10), then the centre 8 x 8
    for model, region in ((plain, {"left": 0, "top": 0, "width": 16, "height": 12}),
                          (cropped, {"left": 2 * 1.2, "top": 1 * 1.2, "width": 8 * 1.2, "height": 8 * 1.2})):
        with client(create_app(model)) as c:
            body = c.post("/v1/explain", json={"image": image, "method": "saliency", "png": False}).json()
        assert body["heatmap"]["region"] == pytest.approx(region)


def test_the_page_and_its_files_are_served_without_the_api_key(chars):
    from serve_models import client

    with client(create_app(gpt(chars), tokenizer=chars, api_key="k3y")) as c:
        root = c.get("/")
        assert root.status_code == 200 and root.headers["content-type"].startswith("text/html")
        for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
            assert f'static/{name}' in root.text
            answer = c.get(f"/static/{name}")
            assert answer.status_code == 200 and kind in answer.headers["content-type"], name
        assert c.get("/v1/models").status_code == 401
        assert "http://" not in root.text and "https://" not in root.text  # nothing from outside the server
        for name in ("app.js", "style.css"):
            text = (STATIC / name).read_text()
            assert "http://" not in text and "https://" not in text, name
