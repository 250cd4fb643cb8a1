"""Tasks: each task's loss and metrics against a direct computation, sums that add up across batches, get_task."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bigmodels.tasks as tasks
from bigmodels.errors import ConfigError
from bigmodels.models import _contract
from bigmodels.tasks import (
    IGNORE_INDEX,
    Classification,
    LanguageModeling,
    MaskedLanguageModeling,
    Seq2Seq,
    Task,
    TokenClassification,
    better,
    get_task,
)


class Fixed(nn.Module):
    """A model that returns the logits it was given, whatever its input (a tensor or keyword arguments)."""

    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, *args, **kwargs):
        return self.out


def _run(task: Task, batches) -> dict[str, float]:
    sums: dict[str, float] = {}
    for logits, y in batches:
        loss, out = task.loss(Fixed(logits), torch.zeros(1), y)
        task.update(sums, loss, out, y)
    return task.finalize(sums)


def test_one_definition_of_call_from_the_model_contract():
    assert tasks.call is _contract.call
    assert tasks.base.call is _contract.call


def test_every_task_name_builds_its_task_and_reports_its_metric_names():
    kinds = {"image_classification": Classification, "sequence_classification": Classification,
             "token_classification": TokenClassification, "language_modeling": LanguageModeling,
             "masked_language_modeling": MaskedLanguageModeling, "translation": Seq2Seq}
    assert set(kinds) == set(tasks.TASK_NAMES)
    for name, cls in kinds.items():
        task = get_task(name)
        assert type(task) is cls and task.name == name and task.metric_names[0] == "loss"


def test_unknown_task_and_misplaced_label_smoothing_are_config_errors():
    with pytest.raises(ConfigError, match=r"unknown task 'detection'; known tasks: image_classification"):
        get_task("detection")
    with pytest.raises(ConfigError, match=r"label_smoothing=0.1 .* not to masked_language_modeling; set it to 0"):
        get_task("masked_language_modeling", label_smoothing=0.1)
    with pytest.raises(ConfigError, match=r"label_smoothing=1.0 must be in \[0, 1\)"):
        get_task("translation", label_smoothing=1.0)


def test_classification_accuracy_top5_and_loss_over_two_batches_equal_one_batch():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(10, 7, generator=g), torch.randint(0, 7, (10,), generator=g)
    task = get_task("image_classification")
    split = _run(task, [(logits[:4], y[:4]), (logits[4:], y[4:])])
    whole = _run(task, [(logits, y)])
    assert split == pytest.approx(whole)
    assert whole["loss"] == pytest.approx(float(F.cross_entropy(logits, y)))
    assert whole["accuracy"] == pytest.approx(float((logits.argmax(-1) == y).float().mean()))
    top5 = logits.topk(5, -1).indices
    assert whole["top5_accuracy"] == pytest.approx(float((top5 == y[:, None]).any(-1).float().mean()))
    assert "top5_accuracy" not in _run(task, [(logits[:, :5], y.clamp(max=4))])  # five classes: no top-5
    with pytest.raises(TypeError, match="int labels"):
        task.update({}, torch.tensor(0.0), logits, F.one_hot(y, 7).float())


def test_language_modeling_perplexity_and_bits_per_token():
    g = torch.Generator().manual_seed(1)
    logits, y = torch.randn(2, 5, 11, generator=g), torch.randint(0, 11, (2, 5), generator=g)
    out = _run(LanguageModeling(), [(logits, y)])
    ce = float(F.cross_entropy(logits.flatten(0, 1), y.flatten()))
    assert out["loss"] == pytest.approx(ce)
    assert out["perplexity"] == pytest.approx(math.exp(ce))
    assert out["bits_per_token"] == pytest.approx(ce / math.log(2))


def test_token_classification_skips_ignored_labels_and_counts_entities_across_batches():
    names = ["O", "B-PER", "I-PER", "B-LOC"]
    # gold: PER (tokens 0-1) and LOC (token 3); prediction: PER right, LOC missed, a spurious LOC at token 2
    y = torch.tensor([[1, 2, 0, 3, IGNORE_INDEX]])
    guess = torch.tensor([[1, 2, 3, 0, 2]])  # the prediction on the ignored position must not count
    logits = F.one_hot(guess, 4).float() * 10
    task = TokenClassification(names)
    out = _run(task, [(logits, y), (logits, y)])
    keep = y != IGNORE_INDEX
    assert out["loss"] == pytest.approx(float(F.cross_entropy(logits[keep], y[keep])))
    assert out["accuracy"] == pytest.approx(2 / 4)
    assert (out["precision"], out["recall"], out["f1"]) == pytest.approx((0.5, 0.5, 0.5))
    assert "f1" not in _run(TokenClassification(), [(logits, y)])  # no label list: token accuracy only


def test_masked_lm_counts_masked_tokens_and_next_sentence_prediction():
    g = torch.Generator().manual_seed(2)
    mlm, nsp = torch.randn(2, 4, 9, generator=g), torch.randn(2, 2, generator=g)
    labels = torch.tensor([[3, IGNORE_INDEX, 5, IGNORE_INDEX], [IGNORE_INDEX, 1, IGNORE_INDEX, IGNORE_INDEX]])
    y = {"labels": labels, "next_sentence_label": torch.tensor([0, 1])}
    out = _run(MaskedLanguageModeling(), [((mlm, nsp), y)])
    keep = labels != IGNORE_INDEX
    mlm_loss = float(F.cross_entropy(mlm[keep], labels[keep]))
    assert out["mlm_loss"] == pytest.approx(mlm_loss)
    assert out["loss"] == pytest.approx(mlm_loss + float(F.cross_entropy(nsp, y["next_sentence_label"])))
    assert out["mlm_accuracy"] == pytest.approx(float((mlm[keep].argmax(-1) == labels[keep]).float().mean()))
    assert out["nsp_accuracy"] == pytest.approx(float((nsp.argmax(-1) == y["next_sentence_label"]).float().mean()))
    mlm_only = _run(MaskedLanguageModeling(), [(mlm, {"labels": labels})])
    assert mlm_only["loss"] == pytest.approx(mlm_loss) and "nsp_accuracy" not in mlm_only


def test_seq2seq_counts_target_tokens_only():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 6, generator=g)
    y = torch.tensor([[1, 2, IGNORE_INDEX], [4, IGNORE_INDEX, IGNORE_INDEX]])
    task = Seq2Seq()
    assert task.count(None, y) == 3
    out = _run(task, [(logits, y)])
    keep = y != IGNORE_INDEX
    ce = float(F.cross_entropy(logits[keep], y[keep]))
    assert out["loss"] == pytest.approx(ce) and out["perplexity"] == pytest.approx(math.exp(ce))
    assert out["token_accuracy"] == pytest.approx(float((logits.argmax(-1)[keep] == y[keep]).float().mean()))


def test_better_knows_which_way_each_metric_improves():
    assert better("loss", 1.0, None)
    assert better("val_loss", 0.5, 0.6) and not better("perplexity", 7.0, 6.0)
    assert better("accuracy", 0.8, 0.7) and better("f1", 0.9, 0.8) and not better("top5_accuracy", 0.1, 0.2)
