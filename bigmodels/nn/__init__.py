"""Reusable blocks only: no block here knows a model family."""

from .attention import (
    ATTENTION_IMPLS,
    KVCache,
    MultiHeadAttention,
    StaticKVCache,
    attention_mask,
    scaled_dot_product_attention,
)
from .embeddings import LearnedPositionalEmbedding, RotaryEmbedding, SinusoidalPositionalEncoding, sinusoidal_table
from .layers import MLP, check_image_input, get_activation, get_norm1d
from .losses import chunked_cross_entropy
from .sampling import filter_logits, sample_next_token

__all__ = [
    "MLP", "get_activation", "get_norm1d", "check_image_input", "filter_logits", "sample_next_token",
    "ATTENTION_IMPLS", "KVCache", "StaticKVCache", "MultiHeadAttention", "attention_mask",
    "scaled_dot_product_attention",
    "LearnedPositionalEmbedding", "RotaryEmbedding", "SinusoidalPositionalEncoding", "sinusoidal_table",
    "chunked_cross_entropy",
]
