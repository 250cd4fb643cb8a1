"""Metrics as pure functions of tensors and lists: no model, data set or task knowledge."""

from .classification import accuracy, bits_per_token, perplexity, topk_correct
from .text import corpus_bleu, corpus_chrf, entity_f1, get_entities, pearson, rank, spearman

__all__ = ["accuracy", "perplexity", "bits_per_token", "topk_correct", "corpus_bleu", "corpus_chrf", "entity_f1",
           "get_entities", "pearson", "rank", "spearman"]
