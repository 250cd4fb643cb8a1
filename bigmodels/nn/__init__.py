"""Reusable blocks only: no block here knows a model family."""

from .layers import MLP, check_image_input, get_activation, get_norm1d
from .sampling import filter_logits, sample_next_token

__all__ = ["MLP", "get_activation", "get_norm1d", "check_image_input", "filter_logits", "sample_next_token"]
