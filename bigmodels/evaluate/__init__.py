"""Metrics and evaluation loops on real tasks."""

from .bleu import corpus_bleu, evaluate_translation, translate_texts
from .loop import evaluate_model
from .metrics import accuracy, bits_per_token, perplexity, topk_correct

__all__ = ["evaluate_model", "accuracy", "perplexity", "bits_per_token", "topk_correct", "corpus_bleu",
           "evaluate_translation", "translate_texts"]
