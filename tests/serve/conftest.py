"""Fixtures of the server's tests: the tokenizers, one thread for torch, and a real headless Chromium (Playwright's
sync API driving Debian's ``chromium``) with a ``page`` fixture that fails on script errors and keeps a screenshot.

The browser needs the ``playwright`` package (the test extra) and a Chromium (``apt-get install chromium``;
``.ci/run`` installs it; ``BIGMODELS_CHROMIUM`` names another binary). Playwright's own browser download is never
used; without either, the browser tests skip.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from bigmodels.data.tokenizers import Tokenizer
from bigmodels.testing import wordpiece_tokenizer

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")

from serve_models import WORDS  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from threads; on a busy 2-core machine OpenMP threads thrash."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def chars() -> Tokenizer:
    return Tokenizer.train_chars("the quick brown fox jumps over the lazy dog. THE END!")


@pytest.fixture(scope="session")
def wordpiece(tmp_path_factory) -> Tokenizer:
    return wordpiece_tokenizer(WORDS, tmp_path_factory.mktemp("wordpiece"))


try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the browser tests skip
    expect = sync_playwright = None

CHROMIUM = os.environ.get("BIGMODELS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Debian's Chromium, headless, with a fresh profile of its own (one per test module: the sync API's event loop
    is not left open across modules that run asyncio themselves)."""
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
