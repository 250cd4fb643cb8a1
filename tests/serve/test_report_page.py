"""The HTML report of ``bigmodels explain`` (:func:`~bigmodels.explain.write_report`) looked at in a real browser:
the report of a tiny text classifier and a tiny CNN, with the faithfulness ranking and the activation analysis,
opened from ``file://`` in the headless Chromium of conftest's ``browser`` fixture. It runs no script of its own,
yet no script error may happen; every picture decodes, the words are drawn on coloured backgrounds and the tables
are there. The ``page`` fixture keeps its screenshot under ``tmp_path``.
"""

from __future__ import annotations

import pytest
import torch
from serve_models import rgba, text_classifier

from bigmodels.testing import tiny_model

try:
    from playwright.sync_api import expect
except ImportError:  # conftest's ``browser`` skips
    expect = None


def _report(tmp_path, wordpiece):
    from bigmodels.explain import activation_report, explain, rank_methods, write_report

    text_model = text_classifier(wordpiece)
    text = "the dog runs in the park"
    texts = [explain(text_model, text, m, tokenizer=wordpiece) for m in ("ig", "saliency")]
    torch.manual_seed(0)
    cnn = tiny_model("resnet18", num_classes=5).eval()
    image = torch.randn(3, 32, 32)
    images = [explain(cnn, image, m, target=2) for m in ("gradcam", "ig")]
    ranks = [{"model": "cnn", **r} for r in rank_methods(cnn, images, steps=4, random_orders=2, infidelity_samples=0,
                                                         sensitivity_samples=0)]
    ranks += [{"model": "text", **r} for r in rank_methods(text_model, texts, steps=3, random_orders=2,
                                                           infidelity_samples=0)]
    labels = torch.arange(24) % 2
    batch = torch.randn(24, 3, 32, 32) + labels[:, None, None, None]  # a label the layers can read
    activations = activation_report(cnn, [batch], labels, class_names=["dark", "bright"])
    path = write_report([*texts, *images], tmp_path / "report" / "report.html", title="A <tiny> report",
                        faithfulness=ranks, activations=activations)
    return path, texts, images, ranks


def test_the_explanation_report_renders_in_a_browser(wordpiece, page, tmp_path):
    pytest.importorskip("captum", reason="the explain extra (captum) is not installed")
    path, texts, images, ranks = _report(tmp_path, wordpiece)
    failed: list[str] = []
    page.on("requestfailed", lambda request: failed.append(request.url))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    expect(page).to_have_title("A <tiny> report")  # escaped in the file, shown as written

    pictures = page.locator("img").evaluate_all("""images => images.map(i => ({alt: i.alt, complete: i.complete,
        width: i.naturalWidth, height: i.naturalHeight, shown: i.getBoundingClientRect().width}))""")
    assert [p["alt"] for p in pictures] == ["layer projections", "gradcam heatmap", "ig heatmap"]
    for p in pictures:
        assert p["complete"] and p["width"] > 0 and p["height"] > 0 and p["shown"] > 0, p
    assert not failed, f"the report asked for something it does not hold: {failed}"

    # the words of each text explanation (and the word pieces), on backgrounds that are not transparent
    spans = page.locator("p.text .tok").evaluate_all("""spans => spans.map(s => ({text: s.textContent,
        title: Number(s.title), colour: getComputedStyle(s).backgroundColor}))""")
    words = [w for e in texts for w in e.words + e.tokens]
    assert [s["text"] for s in spans] == words
    values = [v for e in texts for v in e.word_attributions.tolist() + e.attributions.tolist()]
    assert [s["title"] for s in spans] == pytest.approx(values, rel=1e-3, abs=1e-12)
    for i, j in _blocks(texts):  # red for, blue against, opacity by the share of the paragraph's largest value
        scale = max(abs(v) for v in values[i:j])
        for s, v in zip(spans[i:j], values[i:j], strict=True):
            r, g, b, a = rgba(s["colour"])
            assert (r, g, b) == ((220, 40, 40) if v >= 0 else (40, 90, 220)), s
            assert a == pytest.approx(abs(v) / scale, abs=0.01), s
        assert max(rgba(s["colour"])[3] for s in spans[i:j]) == pytest.approx(1.0)  # not all transparent
    visible = page.locator("p.text").first.locator(".tok")
    expect(visible.first).to_be_visible()

    # the faithfulness table: one row per method and model, best first within each model
    table = page.locator("section", has=page.locator("h2", has_text="Faithfulness")).locator("table")
    expect(table).to_be_visible()
    head = table.locator("tr").first.locator("th").all_inner_texts()
    assert head[:2] == ["model", "method"] and "margin" in head and "deletion_auc" in head
    cells = [r.locator("td").all_inner_texts() for r in table.locator("tr").all()[1:]]
    assert [(c[0], c[1]) for c in cells] == [(r["model"], r["method"]) for r in ranks]
    assert sorted(c[1] for c in cells) == ["gradcam", "ig", "ig", "saliency"]
    expect(page.locator("h3", has_text="Linear probes")).to_be_visible()
    expect(page.get_by_text("completeness: sum of attributions").first).to_be_visible()


def _blocks(texts) -> list[tuple[int, int]]:
    """The index ranges of each token_html paragraph (words, then word pieces) in the spans of the page."""
    out, start = [], 0
    for e in texts:
        for n in (len(e.words), len(e.tokens)):
            out.append((start, start + n))
            start += n
    return out
