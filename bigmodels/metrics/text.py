"""Text-task metrics: Pearson and Spearman correlation (STS-B), entity-level F1 (CoNLL NER), and sacreBLEU's
corpus BLEU and chrF (translation).

Plain math, no model or data knowledge. `entity_f1` chunks tags exactly as conlleval and seqeval's default
mode do, so its numbers compare with published CoNLL-2003 results.

>>> round(spearman([1, 2, 3, 4], [10, 20, 30, 25]), 3)
0.8
>>> entity_f1([["B-PER", "I-PER", "O"]], [["B-PER", "I-PER", "O"]])["f1"]
1.0
>>> round(corpus_bleu(["the cat sat on the mat"], ["the cat sat on the mat"])["bleu"], 2)
100.0
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from bigmodels.errors import DataError

__all__ = ["corpus_bleu", "corpus_chrf", "entity_f1", "get_entities", "pearson", "rank", "spearman"]

logger = logging.getLogger(__name__)

Entity = tuple[str, int, int]  # (type, first token, last token), token positions over the joined sentences


def _vector(values: Sequence[float] | np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.isfinite(array).all():
        raise DataError(f"{name} holds NaN or infinite values; correlations need finite numbers")
    return array


def _pair(x, y) -> tuple[np.ndarray, np.ndarray]:
    a, b = _vector(x, "x"), _vector(y, "y")
    if a.size != b.size or a.size < 2:
        raise DataError(f"correlation needs two sequences of the same length >= 2, got {a.size} and {b.size}")
    return a, b


def rank(values: Sequence[float] | np.ndarray | torch.Tensor) -> np.ndarray:
    """Ranks from 1, ties getting the average of the ranks they span (scipy.stats.rankdata "average").

    >>> rank([10, 30, 20, 20]).tolist()
    [1.0, 4.0, 2.5, 2.5]
    """
    x = _vector(values, "values")
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # Runs of equal values: each run of positions [start, end) gets the mean rank (start + 1 + end) / 2.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], x.size]
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat((starts + 1 + ends) / 2.0, ends - starts)
    return ranks


def pearson(x, y) -> float:
    """Pearson's r of two equally long sequences (lists, numpy arrays or tensors); NaN when one is constant."""
    a, b = _pair(x, y)
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float(a @ a) * float(b @ b))
    if denominator == 0.0:
        logger.warning("pearson: an input is constant, so the correlation is undefined (NaN)")
        return math.nan
    return max(-1.0, min(1.0, float(a @ b) / denominator))


def spearman(x, y) -> float:
    """Spearman's rho: Pearson's r of the ranks (ties averaged), as scipy.stats.spearmanr."""
    a, b = _pair(x, y)
    return pearson(rank(a), rank(b))


def _split_tag(tag: str, where: str) -> tuple[str, str]:
    """("B"|"I"|"E"|"S"|"O", type); type "_" for "O" and for a bare prefix, as seqeval."""
    if tag == "O":
        return "O", "_"
    if tag[:1] not in ("B", "I", "E", "S") or (len(tag) > 1 and tag[1] != "-"):
        raise DataError(f"{where}: tag {tag!r} is not 'O' or B-/I-/E-/S- followed by a type, e.g. 'B-PER'")
    return tag[0], tag[2:] or "_"


def _ends(prev: str, tag: str, prev_type: str, type_: str) -> bool:
    """Does a chunk end before this tag? (conlleval's endOfChunk, seqeval's end_of_chunk)"""
    return (prev in ("E", "S") or (prev in ("B", "I") and tag in ("B", "S", "O"))
            or (prev != "O" and prev_type != type_))


def _starts(prev: str, tag: str, prev_type: str, type_: str) -> bool:
    """Does a chunk start at this tag? An I- after O, or after another type, starts one (conlleval)."""
    return (tag in ("B", "S") or (prev in ("E", "S", "O") and tag in ("E", "I"))
            or (tag != "O" and prev_type != type_))


def get_entities(sentences: Sequence[Sequence[str]]) -> list[Entity]:
    """The chunks (type, start, end) of tag sequences, positions counted over the sentences joined with an
    "O" between them (so no entity crosses a sentence boundary), exactly as seqeval.get_entities.

    >>> get_entities([["B-PER", "I-PER", "O", "I-LOC"], ["I-LOC", "B-ORG"]])
    [('PER', 0, 1), ('LOC', 3, 3), ('LOC', 5, 5), ('ORG', 6, 6)]
    """
    tags = [(tag, f"sentence {s}, token {t}") for s, sent in enumerate(sentences) for t, tag in
            enumerate([*sent, "O"])]
    entities = []
    prev, prev_type, begin = "O", "_", 0
    for i, (tag, where) in enumerate([*tags, ("O", "end")]):
        kind, type_ = _split_tag(tag, where)
        if _ends(prev, kind, prev_type, type_):
            entities.append((prev_type, begin, i - 1))
        if _starts(prev, kind, prev_type, type_):
            begin = i
        prev, prev_type = kind, type_
    return entities


def _prf(tp: int, n_pred: int, n_gold: int) -> dict[str, float]:
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def entity_f1(gold_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Entity-level (micro) precision, recall and F1 of predicted tag sequences against gold ones, plus
    ``per_type``: {type: {precision, recall, f1, support}} (support = gold entities of the type; a type that
    is only predicted appears with support 0, where seqeval's report leaves it out). An entity
    counts as found only when its type and both boundaries match. Scores with no entities to count are 0.

    >>> entity_f1([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "B-ORG"]])["f1"]
    0.5
    """
    if len(gold_tags) != len(pred_tags):
        raise DataError(f"got {len(gold_tags)} gold and {len(pred_tags)} predicted sentences; pass one each")
    for i, (gold, pred) in enumerate(zip(gold_tags, pred_tags, strict=True)):
        if len(gold) != len(pred):
            raise DataError(f"sentence {i} has {len(gold)} gold tags but {len(pred)} predicted; predict one tag "
                            "per word")
    gold_set, pred_set = set(get_entities(gold_tags)), set(get_entities(pred_tags))
    result: dict[str, Any] = _prf(len(gold_set & pred_set), len(pred_set), len(gold_set))
    result["per_type"] = {}
    for type_ in sorted({e[0] for e in gold_set | pred_set}):
        g = {e for e in gold_set if e[0] == type_}
        p = {e for e in pred_set if e[0] == type_}
        result["per_type"][type_] = _prf(len(g & p), len(p), len(g)) | {"support": len(g)}
    return result


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """sacreBLEU corpus BLEU of ``hypotheses`` against one reference each: {"bleu" (0-100), "signature",
    "precisions" (1- to 4-gram, %), "brevity_penalty", "sys_len", "ref_len"}."""
    from sacrebleu.metrics import BLEU

    if isinstance(hypotheses, str) or isinstance(references, str):
        raise DataError("corpus_bleu takes lists of sentences, not one string; wrap a single sentence in a list")
    if len(hypotheses) != len(references) or not len(hypotheses):
        raise DataError(f"got {len(hypotheses)} hypotheses and {len(references)} references; pass one reference "
                        "per hypothesis (and at least one)")
    metric = BLEU()
    score = metric.corpus_score(list(hypotheses), [list(references)])
    return {"bleu": float(score.score), "signature": str(metric.get_signature()),
            "precisions": [float(p) for p in score.precisions], "brevity_penalty": float(score.bp),
            "sys_len": int(score.sys_len), "ref_len": int(score.ref_len)}


def corpus_chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """sacreBLEU's chrF (Popovic 2015, character 6-grams, beta 2): fairer than BLEU on one-word compounds
    (German number words), where BLEU's word 2- to 4-grams do not exist."""
    from sacrebleu.metrics import CHRF

    return float(CHRF().corpus_score(list(hypotheses), [list(references)]).score)
