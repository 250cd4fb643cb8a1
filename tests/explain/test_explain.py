"""The explanation stage: integrated gradients' completeness, Grad-CAM on a planted feature, attention rollout,
LIME and KernelSHAP on linear models, deletion / insertion, the report, and every method on every family."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from explain_models import KinkImage, LinearImage, PlantedCNN
from scipy.stats import spearmanr

from bigmodels.data.tokenizers import Tokenizer
from bigmodels.errors import ConfigError, DataError
from bigmodels.explain import (
    METHODS,
    explain,
    faithfulness,
    prepare,
    rank_methods,
    shap_agreement,
    support_table,
    supports,
    write_report,
)
from bigmodels.explain.attention import rollout
from bigmodels.explain.perturbation import lime_attributions, shap_attributions
from bigmodels.explain.report import token_png
from bigmodels.models._contract import kind_of
from bigmodels.nn.attention import attention_modules
from bigmodels.registry import list_models
from bigmodels.testing import tiny_model

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "film", "was", "un", "##believ", "##able", "dull",
         "and", "a", "##ly", "great", "!"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return Tokenizer.from_vocab(path)


def bert_classifier(**overrides):
    torch.manual_seed(0)
    return tiny_model("bert_mini", head="sequence_classification", num_labels=3, vocab_size=len(VOCAB),
                      **overrides).eval()


# ---------------------------------------------------------------------------------------------- gradients


def test_integrated_gradients_completeness_on_a_bert_classifier(tokenizer):
    e = explain(bert_classifier(), "The film was unbelievable and dull!", method="ig", tokenizer=tokenizer)
    assert e.relative_delta < 0.01  # the axiom at the default 50 steps
    gap = e.extras["f_x_minus_f_baseline"]
    assert abs(float(e.attributions.sum()) - gap) <= 0.01 * abs(gap)
    # per word piece and per word: "unbelievable" is three pieces, one word; [CLS] / [SEP] are no word
    assert e.tokens == ["[CLS]", "the", "film", "was", "un", "##believ", "##able", "and", "dull", "!", "[SEP]"]
    assert e.words == ["The", "film", "was", "unbelievable", "and", "dull", "!"]
    assert torch.allclose(e.word_attributions[3], e.attributions[4:7].sum())
    assert e.word_ids[0] is None and e.word_ids[-1] is None


def test_integrated_gradients_completeness_on_a_resnet():
    torch.manual_seed(0)
    model = tiny_model("resnet18", num_classes=5).eval()
    e = explain(model, torch.randn(3, 32, 32), method="ig", target=2)
    assert e.attributions.shape == (3, 32, 32) and e.target == 2
    assert e.relative_delta < 0.01
    assert abs(float(e.attributions.sum()) - e.extras["f_x_minus_f_baseline"]) < 0.01 * abs(
        e.extras["f_x_minus_f_baseline"])


def test_integrated_gradients_doubles_its_steps_until_complete(caplog):
    # a kink on the path: 50 Gauss-Legendre points miss f(x) - f(0) by 1.4%; the default doubles to completeness
    x = torch.full((1, 4, 4), 0.5)
    model = KinkImage(torch.full((16,), 2.1 / 8.0))  # sum(w * x) = 2.1: the kink halfway along the path
    e = explain(model, x, method="ig", target=0)
    gap = e.extras["f_x_minus_f_baseline"]
    assert e.settings["steps"] > 50 and e.relative_delta < 0.01
    assert abs(float(e.attributions.sum()) - gap) <= 0.01 * abs(gap)
    with caplog.at_level("WARNING", logger="bigmodels.explain.gradients"):
        fixed = explain(model, x, method="ig", target=0, max_steps=50)  # doubling off: the gap is reported
    assert fixed.settings["steps"] == 50 and fixed.relative_delta > 0.01
    assert "raise max_steps" in caplog.text


def test_integrated_gradients_is_exact_on_a_linear_model():
    w = torch.linspace(-1, 1, 16)
    x = torch.randn(1, 4, 4)
    e = explain(LinearImage(w), x, method="ig", target=0)
    assert torch.allclose(e.attributions.reshape(-1), w * x.reshape(-1), atol=1e-5)


def test_next_token_attributions_of_a_language_model():
    model = tiny_model("gpt_mini").eval()
    ids = torch.randint(0, model.config.vocab_size, (10,), generator=torch.Generator().manual_seed(0))
    e = explain(model, ids, method="ig")
    with torch.no_grad():
        assert e.predicted == int(model(ids[None])[0, -1].argmax())
    assert e.attributions.shape == (10,) and e.settings["position"] == 9 and e.relative_delta < 0.01


# ---------------------------------------------------------------------------------------------- Grad-CAM


def _planted_image() -> torch.Tensor:
    x = torch.zeros(2, 16, 16)
    x[0, 2:6, 1:5] = 1.0  # evidence for class 0, top left
    x[1, 10:14, 11:15] = 1.0  # evidence for class 1, bottom right
    return x


@pytest.mark.parametrize(("target", "rows", "cols"), [(0, range(2, 6), range(1, 5)), (1, range(10, 14), range(11, 15))])
def test_grad_cam_localises_a_planted_feature(target, rows, cols):
    e = explain(PlantedCNN(), _planted_image(), method="gradcam", target=target)
    assert e.attributions.shape == (16, 16)
    r, c = divmod(int(e.attributions.argmax()), 16)
    assert r in rows and c in cols
    # the other class's patch gets nothing: the map follows the target, not the brightest input
    other = (slice(10, 14), slice(11, 15)) if target == 0 else (slice(2, 6), slice(1, 5))
    assert float(e.attributions[other].max()) < 0.05 * float(e.attributions.max())


def test_grad_cam_on_vit_tokens():
    e = explain(tiny_model("vit_mini").eval(), torch.randn(1, 8, 8), method="gradcam")
    assert e.attributions.shape == (8, 8) and e.extras["cam"].shape == (4, 4)
    assert torch.isfinite(e.attributions).all() and (e.attributions >= 0).all()


# ---------------------------------------------------------------------------------------------- attention


@pytest.mark.parametrize("name", ["vit_mini", "gpt_mini", "bert_mini"])
def test_attention_rollout_rows_sum_to_one(name):
    model = tiny_model(name).eval()
    x = torch.randn(1, 8, 8) if name == "vit_mini" else torch.arange(1, 9)
    e = explain(model, x, method="attention", position=3 if name == "bert_mini" else None)
    r, maps = e.extras["rollout"], e.extras["attention"]
    assert maps.shape[0] == len(list(attention_modules(model))) and maps.shape[-1] == maps.shape[-2] == r.shape[0]
    assert torch.allclose(r.sum(-1), torch.ones(r.shape[0]), atol=1e-5)
    assert torch.allclose(maps.sum(-1), torch.ones(maps.shape[:-1]), atol=1e-5)  # the raw maps are softmaxes
    if name == "gpt_mini":  # causal: nothing flows from later tokens
        assert torch.allclose(r.triu(1), torch.zeros_like(r))


def test_rollout_follows_the_paper():
    a = torch.softmax(torch.randn(3, 2, 5, 5), -1)  # 3 layers, 2 heads
    eye = torch.eye(5)
    hat = [(0.5 * m.mean(0) + 0.5 * eye) for m in a]
    hat = [h / h.sum(-1, keepdim=True) for h in hat]
    assert torch.allclose(rollout(a), hat[2] @ hat[1] @ hat[0], atol=1e-6)
    assert torch.allclose(rollout(torch.eye(4).expand(1, 2, 4, 4)), torch.eye(4))


# ---------------------------------------------------------------------------------------------- LIME / SHAP


def _linear_problem():
    g = torch.Generator().manual_seed(0)
    weights = torch.randn(2, 12, generator=g)
    x = torch.randn(1, 12, generator=g)
    return (lambda inp: inp @ weights.T), x, weights[1] * x[0]  # true attributions against a zero baseline


def test_kernel_shap_recovers_a_linear_model():
    forward, x, truth = _linear_problem()
    a = shap_attributions(forward, x, 1, torch.arange(12)[None], torch.zeros_like(x), samples=400)
    assert torch.allclose(a[0], truth, atol=1e-3)  # Shapley values of a linear model are w_i (x_i - b_i)


def test_lime_recovers_a_linear_model():
    forward, x, truth = _linear_problem()
    a = lime_attributions(forward, x, 1, torch.arange(12)[None], torch.zeros_like(x), samples=400)
    assert spearmanr(a[0].numpy(), truth.numpy()).statistic > 0.95
    assert torch.equal(a[0].sign(), truth.sign())


@pytest.mark.parametrize("method", ["lime", "shap"])
def test_perturbation_methods_through_explain(method):
    w = torch.linspace(-1, 1, 16)
    x = torch.rand(1, 4, 4) + 0.5
    e = explain(LinearImage(w), x, method=method, target=0, segments=4, samples=300)  # one feature per pixel
    truth = (w * x.reshape(-1)).numpy()
    assert spearmanr(e.attributions.reshape(-1).numpy(), truth).statistic > 0.95


def test_text_perturbations_share_a_word_among_its_pieces(tokenizer):
    e = explain(bert_classifier(), "the film was unbelievable", method="occlusion", tokenizer=tokenizer)
    pieces = e.attributions[4:7]  # un ##believ ##able
    assert torch.allclose(pieces, pieces[0].expand(3)) and torch.allclose(e.word_attributions[3], pieces.sum())
    assert abs(e.attributions[0]) < 1e-6 and abs(e.attributions[-1]) < 1e-6  # [CLS], [SEP] are never blanked


# ---------------------------------------------------------------------------------------------- faithfulness


def test_deletion_and_insertion_on_a_model_with_a_known_answer():
    w = torch.linspace(0.1, 2.0, 16)
    model, x = LinearImage(w), torch.rand(1, 4, 4) + 0.2
    e = explain(model, x, method="ig", target=0)
    f = faithfulness(model, e, steps=16, random_orders=8)
    assert f["deletion_auc"] < f["random_deletion_auc"] and f["insertion_auc"] > f["random_insertion_auc"]
    assert f["deletion"][0] == pytest.approx(f["insertion"][-1])  # both ends are the full input
    e.attributions = -e.attributions  # the worst order: the margins turn negative
    g = faithfulness(model, e, steps=16, random_orders=8)
    assert g["deletion_margin"] < 0 and g["insertion_margin"] < 0
    ranked = rank_methods(model, [explain(model, x, "ig", 0), e])
    assert ranked[0]["method"] == "ig" and ranked[0]["margin"] > ranked[1]["margin"]


def test_faithfulness_of_a_text_explanation(tokenizer):
    model = bert_classifier()
    e = explain(model, "the film was great and unbelievable", method="ig", tokenizer=tokenizer)
    f = faithfulness(model, e, steps=5, random_orders=2)
    assert len(f["deletion"]) == 6 and all(0 <= p <= 1 for p in f["deletion"] + f["insertion"])


def test_infidelity_of_a_perfect_attribution_is_zero():
    from bigmodels.explain import infidelity

    w = torch.linspace(-1, 1, 16)
    model, x = LinearImage(w), torch.rand(1, 4, 4) + 0.2
    e = explain(model, x, method="ig", target=0)  # exact on a linear model: w * x
    perfect = infidelity(model, e, samples=16)
    assert perfect < 1e-8
    e.attributions = torch.randn(e.attributions.shape, generator=torch.Generator().manual_seed(0))
    assert infidelity(model, e, samples=16) > 100 * max(perfect, 1e-10)


def test_faithfulness_adds_infidelity_and_sensitivity(tokenizer):
    w = torch.linspace(0.1, 2.0, 16)
    model, x = LinearImage(w), torch.rand(1, 4, 4) + 0.2
    f = faithfulness(model, explain(model, x, method="ig", target=0), steps=4, random_orders=2)
    assert f["infidelity"] < 1e-8
    assert 0 <= f["sensitivity"] < 0.5  # IG of a linear model moves only with x: |dx| <= 0.02
    steady = faithfulness(model, explain(model, x, method="saliency", target=0), steps=4, random_orders=2)
    assert steady["sensitivity"] == pytest.approx(0.0, abs=1e-6)  # a linear model's gradient does not move
    text = explain(bert_classifier(), "the film was great", method="ig", tokenizer=tokenizer, steps=8)
    g = faithfulness(bert_classifier(), text, steps=3, random_orders=1, infidelity_samples=4)
    assert g["sensitivity"] is None and g["infidelity"] >= 0
    assert faithfulness(model, explain(model, x, "ig", 0), steps=2, random_orders=1, infidelity_samples=0,
                        sensitivity_samples=0)["infidelity"] is None


# ---------------------------------------------------------------------------------------------- report


def test_the_html_report_is_self_contained(tmp_path, tokenizer):
    image = explain(PlantedCNN(), _planted_image(), method="gradcam", target=0)
    text = explain(bert_classifier(), "the film was <dull>", method="ig", tokenizer=tokenizer)
    path = write_report([image, text], tmp_path / "r" / "report.html", faithfulness=[{"method": "ig", "margin": 0.5}])
    page = path.read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 1 and "&lt;" in page  # the text is escaped
    assert not re.search(r"(src|href)\s*=\s*['\"]?(https?:)?//", page) and "http" not in page
    for word in ("film", "completeness", "gradcam", "Faithfulness"):
        assert word in page


def test_a_text_explanation_draws_as_a_png_of_coloured_words(tmp_path, tokenizer):
    from PIL import Image

    e = explain(bert_classifier(), "the film was unbelievably dull and a great film " * 3, method="ig",
                tokenizer=tokenizer)
    data = token_png(e, tmp_path / "t.png", width=4.0)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "t.png").read_bytes() == data
    image = Image.open(tmp_path / "t.png")
    assert image.width == 400 and image.height > 100  # 4 inches at 100 dpi; 27 words wrap onto several lines
    pixels = torch.from_numpy(np.array(image.convert("RGB"))).reshape(-1, 3).int()
    reddish = (pixels[:, 0] > pixels[:, 2] + 40).sum()
    bluish = (pixels[:, 2] > pixels[:, 0] + 40).sum()
    strongest = e.word_attributions.abs().argmax()
    assert (reddish if e.word_attributions[strongest] > 0 else bluish) > 0  # the strongest word is coloured


# ---------------------------------------------------------------------------------------------- every family


def _representatives() -> list[str]:
    """One small preset per family and task (every registered family)."""
    wanted = ["cnn_small", "mlp_small", "resnet_mini", "googlenet_mini", "vit_mini", "rnn_classifier", "bert_mini",
              "minilm-l6-h384", "gpt_mini", "char_rnn", "transformer_mini", "efficientnet_mini", "inception_v3"]
    return [n for n in wanted if n in list_models()]


@pytest.fixture(scope="module")
def table():
    return support_table(_representatives())


def test_the_support_table_covers_every_family(table):
    families = {(r["family"], r["task"]) for r in table}
    registered = {(f, t) for f, t in {(r["family"], r["task"]) for r in support_table(list_models())}}
    assert families == registered
    rows = {r["model"]: r for r in table}
    assert not rows["mlp_small"]["gradcam"] and rows["cnn_small"]["gradcam"] and rows["vit_mini"]["gradcam"]
    assert rows["vit_mini"]["attention"] and not rows["resnet_mini"]["attention"]
    assert rows["transformer_mini"]["attention"] and not rows["transformer_mini"]["ig"]
    assert all(r["ig"] == (r["task"] not in ("sentence_embedding", "translation")) for r in table)


CASES = [(n, m) for n in _representatives() for m in METHODS]


@pytest.mark.parametrize(("name", "method"), CASES, ids=[f"{n}-{m}" for n, m in CASES])
def test_every_method_on_every_family(name, method):
    torch.manual_seed(0)
    model = tiny_model(name).eval()
    if method not in supports(model):
        with pytest.raises(ConfigError, match="does not apply"):
            explain(model, torch.zeros(1), method=method)
        return
    cfg = model.config
    if kind_of(model) == "vision":
        side = getattr(cfg, "img_size", None) or 32
        x = torch.randn(cfg.in_chans, side, side)
    else:
        x = torch.arange(1, 9) % min(getattr(cfg, "vocab_size", None) or cfg.src_vocab_size, 50)
    settings = {"samples": 16} if method in ("lime", "shap") else {"steps": 8} if method == "ig" else {}
    e = explain(model, x, method=method, position=2 if name == "bert_mini" else None, **settings)
    assert torch.isfinite(e.attributions).all()
    if e.modality == "image":
        assert e.attributions.shape[-2:] == x.shape[-2:]
    else:
        assert e.attributions.shape == (8,) and len(e.tokens) == 8


# ---------------------------------------------------------------------------------------------- bad input


def test_errors_name_the_fix(tokenizer):
    with pytest.raises(ConfigError, match="gradcam.*does not apply.*ig, saliency or occlusion"):
        explain(tiny_model("mlp_small"), torch.randn(1, 8, 8), method="gradcam")
    with pytest.raises(ConfigError, match=r"target=7 is out of range: this model has 3 classes \(0 \.\. 2\)"):
        explain(bert_classifier(), "the film", method="saliency", target=7, tokenizer=tokenizer)
    long = " ".join(["film"] * 80)  # 82 tokens for a 64-position model
    with pytest.raises(DataError, match="82 tokens but this model takes at most 64.*shorten"):
        explain(bert_classifier(), long, method="ig", tokenizer=tokenizer)
    with pytest.raises(ConfigError, match="unknown explanation method 'gradients'; choose one of saliency, ig"):
        explain(bert_classifier(), "the film", method="gradients", tokenizer=tokenizer)
    with pytest.raises(ConfigError, match="'ig' takes no setting samples; its settings are steps"):
        explain(bert_classifier(), "the film", method="ig", tokenizer=tokenizer, samples=3)
    with pytest.raises(ConfigError, match="needs its tokenizer"):
        explain(bert_classifier(), "the film", method="ig")
    with pytest.raises(ConfigError, match="position="):
        explain(tiny_model("bert_mini"), torch.arange(1, 6), method="ig")


def test_kernel_shap_is_exact_when_its_samples_cover_every_coalition():
    # a nonlinear text classifier, 8 features: 256 samples enumerate the game, whose values add up to the gap
    torch.manual_seed(0)
    model = bert_classifier()
    ids = torch.randint(5, len(VOCAB), (8,))
    exact = explain(model, ids, method="shap", target=1, samples=256)
    assert exact.settings["exact"] is True
    s = prepare(model, ids)
    with torch.no_grad():
        gap = float(s.forward(s.x)[0, 1] - s.forward(s.baseline())[0, 1])
    assert abs(float(exact.attributions.sum()) - gap) < 1e-4 * max(1.0, abs(gap))  # efficiency, exactly
    sampled = explain(model, ids, method="shap", target=1, samples=255)  # one short: captum's estimate
    assert sampled.settings["exact"] is False
    assert torch.corrcoef(torch.stack([exact.attributions, sampled.attributions]))[0, 1] > 0.8


def test_shap_agreement_without_shap_names_the_extra(monkeypatch):
    import bigmodels.explain.agreement as agreement

    real = agreement.importlib.util.find_spec
    monkeypatch.setattr(agreement.importlib.util, "find_spec", lambda name: None if name == "shap" else real(name))
    with pytest.raises(ConfigError, match=r'pip install "bigmodels\[shap\]"'):
        shap_agreement(tiny_model("cnn_small").eval(), torch.randn(1, 8, 8), target=0)
