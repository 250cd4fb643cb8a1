"""Reusable blocks only: no block here knows a model family."""

from .attention import (
    ATTENTION_IMPLS,
    AttentionProbs,
    KVCache,
    MultiHeadAttention,
    StaticKVCache,
    attention_mask,
    attention_modules,
    pack_qkv_,
    reference_attention,
    scaled_dot_product_attention,
    set_attention_impl,
    unpack_qkv_,
)
from .embeddings import LearnedPositionalEmbedding, RotaryEmbedding, SinusoidalPositionalEncoding, sinusoidal_table
from .layers import MLP, check_image_input, get_activation, get_norm1d
from .losses import chunked_cross_entropy

__all__ = [
    "MLP", "get_activation", "get_norm1d", "check_image_input",
    "ATTENTION_IMPLS", "KVCache", "StaticKVCache", "MultiHeadAttention", "attention_mask",
    "scaled_dot_product_attention", "AttentionProbs", "pack_qkv_", "unpack_qkv_", "attention_modules",
    "set_attention_impl", "reference_attention",
    "LearnedPositionalEmbedding", "RotaryEmbedding", "SinusoidalPositionalEncoding", "sinusoidal_table",
    "chunked_cross_entropy",
]
