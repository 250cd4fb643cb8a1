"""Evaluation loops on real tasks (the metrics themselves are pure functions in :mod:`bigmodels.metrics`)."""

from ..metrics import accuracy, bits_per_token, corpus_bleu, perplexity, topk_correct
from .bleu import evaluate_translation, translate_texts
from .loop import evaluate_model

__all__ = ["evaluate_model", "accuracy", "perplexity", "bits_per_token", "topk_correct", "corpus_bleu",
           "evaluate_translation", "translate_texts"]
