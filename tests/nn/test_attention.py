"""Unit tests of the attention and position-embedding blocks (bigmodels/nn/attention.py, embeddings.py)."""

from __future__ import annotations

import math

import pytest
import torch

from bigmodels.errors import ConfigError
from bigmodels.nn import (
    KVCache,
    MultiHeadAttention,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    attention_mask,
    scaled_dot_product_attention,
    sinusoidal_table,
)
from bigmodels.nn import attention as attention_module

B, NH, HS = 2, 3, 8


def qkv(tq: int, tk: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, NH, tq, HS, generator=g), torch.randn(B, NH, tk, HS, generator=g),
            torch.randn(B, NH, tk, HS, generator=g))


PADDING = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])  # row 0 is left-padded by 2


@pytest.mark.parametrize("tq", [6, 2], ids=["full", "cached_keys"])
@pytest.mark.parametrize("causal,padding", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["none", "causal", "padding", "causal+padding"])
@pytest.mark.parametrize("cpu_math_max_keys", [0, 32], ids=["fused_kernel", "cpu_short_keys_route"])
def test_reference_and_fused_attention_agree(causal, padding, tq, cpu_math_max_keys, monkeypatch):
    # impl="sdpa" takes the fused kernel, or on the CPU for short keys the matrix-product route: both checked
    monkeypatch.setattr(attention_module, "_CPU_MATH_MAX_KEYS", cpu_math_max_keys)
    q, k, v = qkv(tq, 6)
    mask = attention_mask(tq, 6, causal=causal, key_padding=PADDING if padding else None)
    ref, weights = scaled_dot_product_attention(q, k, v, mask, impl="reference")
    fused, none = scaled_dot_product_attention(q, k, v, mask, impl="sdpa")
    assert none is None
    torch.testing.assert_close(fused, ref, atol=1e-6, rtol=0)
    assert torch.isfinite(ref).all() and torch.isfinite(fused).all()
    # the weights are distributions over the keys, zero where the mask blocks a key
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, NH, tq), atol=1e-6, rtol=0)
    if mask is not None:
        blocked = (mask < 0).expand_as(weights)
        real_rows = ~blocked.all(-1, keepdim=True)  # rows with at least one visible key
        assert (weights[blocked & real_rows] < 1e-30).all()
    if causal and not padding:  # the kernel's own causal flag agrees with the mask tensor (aligned q/k)
        if tq == 6:
            flagged, _ = scaled_dot_product_attention(q, k, v, is_causal=True, impl="sdpa")
            torch.testing.assert_close(flagged, ref, atol=1e-6, rtol=0)


def test_causal_mask_with_cached_keys_lets_query_i_see_keys_up_to_its_position():
    mask = attention_mask(2, 5, causal=True)  # queries are positions 3 and 4 of 5
    allowed = (mask[0, 0] == 0).int()
    assert allowed.tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert attention_mask(1, 5, causal=True) is None  # one decoding step sees everything: no mask needed
    assert attention_mask(4, 4) is None


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
def test_fully_masked_row_gives_no_nan(impl):
    q, k, v = qkv(4, 4)
    pad = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    mask = attention_mask(4, 4, causal=True, key_padding=pad)  # row 0, queries 0-1 see no real key
    out, _ = scaled_dot_product_attention(q, k, v, mask, impl=impl)
    assert torch.isfinite(out).all()
    fp16_mask = attention_mask(4, 4, causal=True, key_padding=pad, dtype=torch.float16)
    assert torch.isfinite(fp16_mask).all()  # the dtype's min, not -inf: no inf - inf in the softmax


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
def test_incremental_decoding_with_kv_cache_equals_full_causal_forward(impl):
    torch.manual_seed(0)
    mha = MultiHeadAttention(24, 3, impl=impl).eval()
    x = torch.randn(B, 7, 24)
    with torch.no_grad():
        full = mha(x, causal=True)
        cache = KVCache(1)
        steps = [mha(x[:, :3], causal=True, cache=cache)]  # a prompt of 3, then one token at a time
        steps += [mha(x[:, t:t + 1], causal=True, cache=cache) for t in range(3, 7)]
    assert len(cache) == 7
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-6, rtol=0)


def test_incremental_decoding_with_padding_and_rotary():
    torch.manual_seed(0)
    mha = MultiHeadAttention(24, 3, rotary=RotaryEmbedding(8)).eval()
    x = torch.randn(B, 6, 24)
    with torch.no_grad():
        full = mha(x, causal=True, key_padding=PADDING)
        cache = KVCache(1)
        first = mha(x[:, :4], causal=True, key_padding=PADDING[:, :4], cache=cache)
        rest = [mha(x[:, t:t + 1], causal=True, key_padding=PADDING[:, :t + 1], cache=cache) for t in (4, 5)]
    real = PADDING.bool()  # a padding query sees no real key: its (uniform) output is meaningless
    torch.testing.assert_close(torch.cat([first, *rest], 1)[real], full[real], atol=1e-6, rtol=0)


def test_multi_head_attention_weights_and_cross_attention_shape():
    torch.manual_seed(0)
    self_attn = MultiHeadAttention(16, 4, impl="reference")
    out, w = self_attn(torch.randn(B, 5, 16), causal=True, return_weights=True)
    assert out.shape == (B, 5, 16) and w.shape == (B, 4, 5, 5)
    assert torch.all(w.triu(1) == 0)  # no query looks ahead
    cross = MultiHeadAttention(16, 4, fused_qkv=False)
    memory_pad = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0, 0], [1] * 9])
    out, w = cross(torch.randn(B, 5, 16), memory=torch.randn(B, 9, 16), key_padding=memory_pad, return_weights=True)
    assert out.shape == (B, 5, 16) and w.shape == (B, 4, 5, 9)
    assert torch.all(w[0, :, :, 7:] == 0)


def test_rotary_dot_product_depends_only_on_relative_position():
    rope = RotaryEmbedding(HS)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, HS, generator=g), torch.randn(1, 1, 1, HS, generator=g)

    def score(m: int, n: int) -> torch.Tensor:
        return (rope(q, torch.tensor([[m]])) * rope(k, torch.tensor([[n]]))).sum()

    for offset in (0, 1, 5, 40):
        torch.testing.assert_close(score(3 + offset, 1 + offset), score(3, 1), atol=1e-5, rtol=0)
    assert not torch.allclose(score(3, 1), score(4, 1))
    # a rotation keeps the norm, and position 0 is the identity
    torch.testing.assert_close(rope(q, torch.tensor([[7]])).norm(), q.norm())
    torch.testing.assert_close(rope(q, torch.tensor([[0]])), q)


def test_sinusoidal_table_matches_the_paper():
    d = 16
    table = sinusoidal_table(50, d)
    for pos, i in [(0, 0), (1, 0), (7, 3), (49, 7), (13, 5)]:  # PE(pos, 2i) = sin(pos / 10000^(2i/d))
        angle = pos / 10000 ** (2 * i / d)
        assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
        assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    enc = SinusoidalPositionalEncoding(50, d)
    assert torch.equal(enc(torch.tensor([[3, 4]])), table[[3, 4]][None])
    assert "table" not in enc.state_dict()  # computed, never saved


def test_invalid_impl_and_heads_raise_config_error():
    with pytest.raises(ConfigError, match="flash"):
        MultiHeadAttention(16, 4, impl="flash")
    with pytest.raises(ConfigError, match="flash"):
        scaled_dot_product_attention(*qkv(2, 2), impl="flash")
    with pytest.raises(ConfigError, match="30.*4"):
        MultiHeadAttention(30, 4)
