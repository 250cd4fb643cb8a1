"""Semantic textual similarity: embed both sentences of each pair, score by cosine, correlate with gold.

The STS-B figure sentence-transformers publishes is the Spearman correlation of those cosines with the
gold scores (0-5) on the test split.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..metrics.text import pearson, spearman

__all__ = ["evaluate_sts"]


def evaluate_sts(
    model: nn.Module, tokenizer, pairs: Sequence[tuple[str, str, float]], *, batch_size: int = 64,
    max_length: int = 256,
) -> dict[str, float]:
    """{"spearman", "pearson", "pairs"} of cosine(embed(s1), embed(s2)) against the gold scores.

    >>> evaluate_sts(model, tokenizer, read_stsb("../shared/data/stsb", "test"))["spearman"]  # doctest: +SKIP
    0.8203...
    """
    from ..infer.embed import embed_texts

    first = embed_texts(model, tokenizer, [p[0] for p in pairs], batch_size=batch_size, max_length=max_length)
    second = embed_texts(model, tokenizer, [p[1] for p in pairs], batch_size=batch_size, max_length=max_length)
    cosine = torch.nn.functional.cosine_similarity(first, second, dim=-1)  # (N,)
    gold = [p[2] for p in pairs]
    return {"spearman": spearman(cosine, gold), "pearson": pearson(cosine, gold), "pairs": len(pairs)}
