"""Tests for bigmodels.metrics.text: correlations against scipy, entity F1 on conlleval's cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bigmodels.errors import DataError
from bigmodels.metrics.text import entity_f1, get_entities, pearson, rank, spearman

stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("seed", range(5))
def test_correlations_match_scipy(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=200)
    y = 0.6 * x + rng.normal(size=200)
    tied_x, tied_y = np.round(x * 2) / 2, rng.integers(0, 5, size=200).astype(float)  # many ties
    for a, b in ((x, y), (tied_x, y), (tied_x, tied_y), (y, -y)):
        assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
        assert pearson(a, b) == pytest.approx(stats.pearsonr(a, b).statistic, abs=1e-12)
    assert np.array_equal(rank(tied_y), stats.rankdata(tied_y))
    # tensors and lists work too (STS-B: model cosines against gold scores)
    assert spearman(torch.tensor(x, dtype=torch.float32), y.tolist()) == pytest.approx(
        stats.spearmanr(x.astype(np.float32), y).statistic, abs=1e-6)


def test_correlation_edge_cases():
    assert spearman([1, 2, 3], [1, 2, 3]) == 1.0 and spearman([1, 2, 3], [3, 2, 1]) == -1.0
    assert spearman([1, 2, 3, 4], [1, 4, 9, 16]) == 1.0 and pearson([1, 2, 3, 4], [1, 4, 9, 16]) < 1.0
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3])) and math.isnan(spearman([2, 2], [1, 2]))
    with pytest.raises(DataError, match="same length"):
        spearman([1, 2, 3], [1, 2])
    with pytest.raises(DataError, match=">= 2"):
        pearson([1], [1])
    with pytest.raises(DataError, match="NaN"):
        pearson([1, float("nan")], [1, 2])


def test_get_entities_follows_conlleval():
    # I- after O, or after another type, starts an entity; B- always starts one
    assert get_entities([["I-PER", "I-PER", "O"]]) == [("PER", 0, 1)]
    assert get_entities([["B-PER", "I-LOC", "I-LOC"]]) == [("PER", 0, 0), ("LOC", 1, 2)]
    assert get_entities([["B-PER", "B-PER", "I-PER"]]) == [("PER", 0, 0), ("PER", 1, 2)]
    assert get_entities([["O", "I-MISC", "O", "I-MISC", "I-MISC"]]) == [("MISC", 1, 1), ("MISC", 3, 4)]
    # no entity crosses a sentence boundary; positions count an "O" between sentences
    assert get_entities([["B-ORG"], ["I-ORG", "O"]]) == [("ORG", 0, 0), ("ORG", 2, 2)]
    # IOBES works as in seqeval's default mode
    assert get_entities([["S-LOC", "B-PER", "E-PER", "O"]]) == [("LOC", 0, 0), ("PER", 1, 2)]
    assert get_entities([[]]) == []
    with pytest.raises(DataError, match="sentence 0, token 1: tag 'PER'"):
        get_entities([["O", "PER"]])


def test_entity_f1_hand_cases():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG", "I-ORG"]]
    perfect = entity_f1(gold, gold)
    assert (perfect["precision"], perfect["recall"], perfect["f1"]) == (1.0, 1.0, 1.0)
    assert perfect["per_type"]["ORG"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}

    # one entity missed (ORG), the others right
    partial = entity_f1(gold, [["B-PER", "I-PER", "O", "B-LOC"], ["O", "O", "O", "O"]])
    assert partial["precision"] == 1.0 and partial["recall"] == pytest.approx(2 / 3)
    assert partial["f1"] == pytest.approx(0.8) and partial["per_type"]["ORG"]["recall"] == 0.0

    # right span, wrong type: a false positive (MISC) and a false negative (LOC)
    wrong_type = entity_f1(gold, [["B-PER", "I-PER", "O", "B-MISC"], ["O", "B-ORG", "I-ORG", "I-ORG"]])
    assert wrong_type["precision"] == pytest.approx(2 / 3) and wrong_type["recall"] == pytest.approx(2 / 3)
    assert wrong_type["per_type"]["MISC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}

    # boundary errors: too short, too long, split in two
    boundary = entity_f1(gold, [["B-PER", "O", "O", "B-LOC"], ["B-ORG", "I-ORG", "I-ORG", "I-ORG"]])
    assert boundary["precision"] == pytest.approx(1 / 3) and boundary["recall"] == pytest.approx(1 / 3)
    split = entity_f1([["B-PER", "I-PER"]], [["B-PER", "B-PER"]])
    assert (split["precision"], split["recall"], split["f1"]) == (0.0, 0.0, 0.0)

    # conlleval: a prediction that starts with I- still counts as the entity
    lenient = entity_f1([["B-PER", "I-PER", "O"]], [["I-PER", "I-PER", "O"]])
    assert lenient["f1"] == 1.0
    # nothing predicted, nothing to find
    empty = entity_f1([["O", "O"]], [["O", "O"]])
    assert (empty["precision"], empty["recall"], empty["f1"], empty["per_type"]) == (0.0, 0.0, 0.0, {})


def test_entity_f1_matches_seqeval_documented_example():
    # seqeval's own docstring example: f1_score / precision_score / recall_score all 0.50
    gold = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    pred = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    result = entity_f1(gold, pred)
    assert (result["precision"], result["recall"], result["f1"]) == (0.5, 0.5, 0.5)
    assert result["per_type"]["MISC"]["f1"] == 0.0 and result["per_type"]["PER"]["f1"] == 1.0


def test_entity_f1_micro_average_and_errors():
    gold = [["B-PER", "O", "B-LOC", "I-LOC", "O", "B-ORG"]] * 3
    pred = [["B-PER", "O", "B-LOC", "O", "O", "B-ORG"], ["B-PER", "O", "B-LOC", "I-LOC", "O", "O"],
            ["B-MISC", "O", "B-LOC", "I-LOC", "O", "B-ORG"]]
    result = entity_f1(gold, pred)
    # 9 gold entities; predicted: 3 + 2 + 3 = 8, correct: 2 + 2 + 2 = 6
    assert result["precision"] == pytest.approx(6 / 8) and result["recall"] == pytest.approx(6 / 9)
    assert result["f1"] == pytest.approx(2 * (6 / 8) * (6 / 9) / (6 / 8 + 6 / 9))
    assert {t: v["support"] for t, v in result["per_type"].items()} == {"LOC": 3, "MISC": 0, "ORG": 3, "PER": 3}
    with pytest.raises(DataError, match="sentence 1 has 2 gold tags but 1 predicted"):
        entity_f1([["O"], ["O", "O"]], [["O"], ["O"]])
    with pytest.raises(DataError, match="2 gold and 1 predicted sentences"):
        entity_f1([["O"], ["O"]], [["O"]])
