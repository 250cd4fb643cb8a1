"""The web page at ``/`` in a real headless Chromium (Playwright's sync API driving Debian's ``chromium``) against a
live uvicorn server on 127.0.0.1: text generated through the page streams in and equals the greedy pipeline's, the
API key field and the server's error messages work, text and image classification and sentence similarity show
the pipelines' numbers, and each panel shows only for a model that answers its endpoint. Each test keeps a
screenshot under its ``tmp_path`` and prints where.

Needs the ``playwright`` package (the test extra) and a Chromium (``apt-get install chromium``; ``.ci/run`` installs
it; ``BIGMODELS_CHROMIUM`` names another binary). Playwright's own browser download is never used.
"""

from __future__ import annotations

import io
import os
import shutil
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from PIL import Image
from serve_models import TEXTS, embedder, gpt, image_classifier, live_server, slowed, text_classifier

from bigmodels.infer.pipelines import pipeline
from bigmodels.serve import create_app
from bigmodels.serve.app import STATIC

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the browser tests skip; the page's files are still checked
    expect = sync_playwright = None
if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = os.environ.get("BIGMODELS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
PANELS = ("generate", "classify", "similarity", "translate")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Debian's Chromium, headless, with a fresh profile of its own."""
    if sync_playwright is None:
        pytest.skip("the playwright package is not installed (pip install -e '.[test]')")
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium; or set BIGMODELS_CHROMIUM to a Chromium "
                    "binary)")
    expect.set_options(timeout=15_000)  # a busy 2-core machine
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path_factory.mktemp("chromium-profile"), executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1000, "height": 760})
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser, tmp_path, request):
    """A new tab; no uncaught script error may happen in it, and its screenshot is kept under ``tmp_path``."""
    tab = browser.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    yield tab
    shot = tmp_path / f"{request.node.name}.png"
    tab.screenshot(path=shot, full_page=True)
    print(f"screenshot of the page: {shot}")
    tab.close()
    assert not errors, f"script errors in the page: {errors}"


def _open(page: Page, base: str, shown: str) -> None:
    """Load the page and wait until it has asked the server for the model; only the ``shown`` panel is visible."""
    page.goto(f"{base}/")
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
