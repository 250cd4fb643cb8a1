"""Attention: a readable reference, the fused PyTorch kernel, multi-head attention with masks and a KV cache.

Scaled dot-product attention (Vaswani et al. 2017, eq. 1)::

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k) + M) V

where M is an additive mask (0 where a query may look, a very large negative number where it may not).
``impl="reference"`` computes exactly that and can return the attention weights for inspection;
``impl="sdpa"`` calls ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient /
cuDNN kernels where the device has them). Both take the same masks and agree to float rounding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .padding import Unpadded

__all__ = [
    "ATTENTION_IMPLS",
    "scaled_dot_product_attention",
    "attention_mask",
    "KVCache",
    "StaticKVCache",
    "MultiHeadAttention",
]

ATTENTION_IMPLS = ("sdpa", "reference")


def attention_mask(
    q_len: int,
    k_len: int,
    *,
    causal: bool = False,
    key_padding: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
) -> torch.Tensor | None:
    """Additive mask (B or 1, 1, q_len, k_len): 0 = attend, dtype's min = blocked; None when nothing is blocked.

    ``key_padding``: (B, k_len), 1/True for real tokens, 0/False for padding. With ``causal`` the queries
    are the *last* ``q_len`` positions of the ``k_len`` keys (so a KV cache of past keys is handled).
    Blocked entries use the dtype's most negative finite value rather than -inf, so a row with every key
    blocked (a padding query) gives uniform weights instead of NaN, as Hugging Face models do.
    """
    if key_padding is None and (not causal or q_len == 1):
        return None  # nothing blocked: a single causal query (one decoding step) sees every key
    device = device if device is not None else (key_padding.device if key_padding is not None else None)
    allowed = torch.ones(1, 1, q_len, k_len, dtype=torch.bool, device=device)
    if causal:
        # query i (absolute position k_len - q_len + i) sees keys 0 .. k_len - q_len + i
        allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)[None, None]
    if key_padding is not None:
        allowed = allowed & key_padding.bool()[:, None, None, :]  # (B, 1, q_len, k_len)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)


# On the CPU the fused kernel loses to two batched matrix products for short keys (sentences): measured
# 20-25% slower at T = 12..30 (batch 64, 12 heads of 32, 2 threads, torch 2.13). GPUs always fuse.
_CPU_MATH_MAX_KEYS = 32


def _math_is_faster(q: torch.Tensor, k: torch.Tensor) -> bool:
    return q.device.type == "cpu" and k.size(-2) <= _CPU_MATH_MAX_KEYS


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    impl: str = "sdpa",
    return_weights: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """softmax(q k^T / sqrt(d) + mask) v for q (B, nh, Tq, hs), k and v (B, nh, Tk, hs).

    ``is_causal`` applies a causal mask without a mask tensor (queries and keys aligned). Returns (output
    (B, nh, Tq, hs), weights (B, nh, Tq, Tk) or None). Asking for the weights uses the reference path,
    since the fused kernel never materialises them.
    """
    if impl not in ATTENTION_IMPLS:
        raise ConfigError(f"attention impl {impl!r} is not valid; choose one of {', '.join(ATTENTION_IMPLS)}")
    if impl == "sdpa" and not return_weights and not _math_is_faster(q, k):
        mask = mask.to(q.dtype) if mask is not None else None
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal), None
    if is_causal:
        mask = attention_mask(q.size(-2), k.size(-2), causal=True, dtype=q.dtype, device=q.device)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, nh, Tq, Tk)
    if mask is not None:
        scores = scores + mask.to(scores.dtype)
    weights = scores.float().softmax(dim=-1).to(q.dtype)
    out = F.dropout(weights, p=dropout_p) @ v if dropout_p > 0 else weights @ v  # (B, nh, Tq, hs)
    return out, weights if return_weights or impl == "reference" else None


class KVCache:
    """Keys and values of past positions, per layer, for incremental decoding.

    ``update(layer, k, v)`` appends the new (B, nh, T_new, hs) keys/values and returns all of them.
    """

    def __init__(self, num_layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers

    def __len__(self) -> int:
        """Positions cached (of the first layer)."""
        return 0 if self.keys[0] is None else self.keys[0].size(-2)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=-2)
            v = torch.cat([self.values[layer], v], dim=-2)
        self.keys[layer], self.values[layer] = k, v
        return k, v

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows (beam search)."""
        self.keys = [None if t is None else t.index_select(0, index) for t in self.keys]
        self.values = [None if t is None else t.index_select(0, index) for t in self.values]


class StaticKVCache:
    """A preallocated key/value cache: (B, nh, max_length, hs) buffers per layer, written in place.

    The dynamic :class:`KVCache` grows by concatenation, so every decoding step has new shapes. Here the
    buffers never change shape or address and the write position is a device tensor, so a one-token step
    is the same computation every time: what CUDA graphs (``torch.compile(mode="reduce-overhead")``) need.
    ``update(layer, k, v)`` writes the new keys/values at the next free slots and returns the *whole*
    buffers, so attention must hide the slots not yet written: :meth:`mask` gives that additive mask
    (query at slot s sees slots <= s, and only real tokens where a ``key_padding`` mask is given).
    Every forward pass updates each of the ``num_layers`` layers once, in order.

    >>> cache = StaticKVCache(2, batch_size=1, num_heads=4, max_length=16, head_dim=8)
    >>> k = v = torch.randn(1, 4, 3, 8)
    >>> cache.update(0, k, v)[0].shape, cache.update(1, k, v)[0].shape
    (torch.Size([1, 4, 16, 8]), torch.Size([1, 4, 16, 8]))
    >>> len(cache)
    3
    """

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_heads: int,
        max_length: int,
        head_dim: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        for name, value in (("num_layers", num_layers), ("batch_size", batch_size), ("num_heads", num_heads),
                            ("max_length", max_length), ("head_dim", head_dim)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"StaticKVCache {name}={value!r} must be a positive int")
        shape = (batch_size, num_heads, max_length, head_dim)
        self.num_layers, self.batch_size, self.max_length, self.dtype = num_layers, batch_size, max_length, dtype
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        device = self.keys[0].device
        self.position = torch.zeros(1, dtype=torch.long, device=device)  # (1,): slots written so far
        self._arange = torch.arange(max_length, device=device)  # (L,): slot numbers, allocated once
        self._index = self.position  # (T,): the slots the current forward pass writes (set at layer 0)

    def __len__(self) -> int:
        """Positions written (reads the device position: a sync, which decoding itself never needs)."""
        return int(self.position.item())

    def slots(self, q_len: int) -> torch.Tensor:
        """The buffer slots (q_len,) the next ``q_len`` new positions are written to."""
        return self._arange[:q_len] + self.position

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, nh, T_new, hs) at the next slots; returns the full (B, nh, max_length, hs) buffers."""
        if layer == 0:
            self._index = self.slots(k.size(-2))  # (T_new,)
        self.keys[layer].index_copy_(2, self._index, k.to(self.dtype))
        self.values[layer].index_copy_(2, self._index, v.to(self.dtype))
        if layer == self.num_layers - 1:
            self.position.add_(k.size(-2))  # in place: the tensor keeps its address
        return self.keys[layer], self.values[layer]

    def mask(self, q_len: int, key_padding: torch.Tensor | None = None, *,
             dtype: torch.dtype | None = None) -> torch.Tensor:
        """Additive mask (B or 1, 1, q_len, max_length) for the next ``q_len`` queries over the whole buffer.

        Query i (at slot position + i) sees the slots up to its own: causal, and the unwritten ones hidden.
        ``key_padding`` (B, max_length): 1 for real tokens, 0 for (left) padding, over the whole buffer.
        """
        dtype = dtype or self.dtype
        allowed = self._arange[None, :] <= self.slots(q_len)[:, None]  # (q_len, L)
        allowed = allowed[None, None]  # (1, 1, q_len, L)
        if key_padding is not None:
            allowed = allowed & key_padding.bool()[:, None, None, :]  # (B, 1, q_len, L)
        mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        return mask.masked_fill_(~allowed, torch.finfo(dtype).min)

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows (beam search), in place: the buffers keep their addresses."""
        for t in (*self.keys, *self.values):
            t.copy_(t.index_select(0, index))

    def reset(self) -> None:
        """Forget every position (the buffers are reused; unwritten slots are always masked)."""
        self.position.zero_()

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the cache owns; none ever changes shape or address (what a compiler may rely on)."""
        return [*self.keys, *self.values, self.position, self._arange]


class MultiHeadAttention(nn.Module):
    """Multi-head attention: project to heads, attend, merge heads, project out.

    ``fused_qkv`` keeps one (dim -> 3*dim) projection (GPT-2's layout, one matrix product instead of
    three); otherwise q_proj / k_proj / v_proj (BERT's layout, needed for cross-attention too).

    >>> mha = MultiHeadAttention(64, 4)
    >>> mha(torch.randn(2, 10, 64), causal=True).shape
    torch.Size([2, 10, 64])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        bias: bool = True,
        dropout: float = 0.0,
        fused_qkv: bool = True,
        impl: str = "sdpa",
        rotary: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"the model width {dim} must be divisible by the number of heads {num_heads}")
        if impl not in ATTENTION_IMPLS:
            raise ConfigError(f"attention impl {impl!r} is not valid; choose one of {', '.join(ATTENTION_IMPLS)}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.dropout, self.impl, self.rotary = dropout, impl, rotary
        if fused_qkv:
            self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        else:
            self.q_proj = nn.Linear(dim, dim, bias=bias)
            self.k_proj = nn.Linear(dim, dim, bias=bias)
            self.v_proj = nn.Linear(dim, dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)

    def _stacked_qkv(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """q/k/v projections stacked into one (3C, C) matrix and (3C,) bias, for separate-projection layouts.

        Kept between calls while the parameters are unchanged (same storage, no in-place update), so
        inference pays the copy once; it costs one more copy of the three matrices in memory.
        """
        projs = (self.q_proj, self.k_proj, self.v_proj)
        params = [m.weight for m in projs] + [m.bias for m in projs if m.bias is not None]
        key = tuple((p.data_ptr(), p._version, p.dtype) for p in params)
        cached = self.__dict__.get("_stacked")
        if cached is None or cached[0] != key:
            weight = torch.cat([m.weight for m in projs])  # (3C, C)
            bias = torch.cat([m.bias for m in projs]) if projs[0].bias is not None else None
            cached = self.__dict__["_stacked"] = (key, weight, bias)
        return cached[1], cached[2]

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)

    def forward(
        self,
        x: torch.Tensor,
        *,
        memory: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        key_padding: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
        positions: torch.Tensor | None = None,
        return_weights: bool = False,
        unpadded: Unpadded | None = None,
    ):
        """x (B, T, C) -> (B, T, C); with ``return_weights``, also the (B, nh, T, Tk) attention weights.

        With ``unpadded`` (self-attention only), x is the (N, C) rows of the real tokens of a padded batch
        and so is the result: the projections run on real tokens only, attention on the padded layout.

        ``memory`` (B, S, C) makes it cross-attention. ``mask`` is a ready additive mask; otherwise one is
        built from ``causal`` and ``key_padding`` (B, Tk) over the keys, the cached ones included.
        ``positions`` (B, T) feed a rotary embedding (default: 0..T-1, continuing after the cached keys).
        With ``memory`` and a ``cache``, the cache holds the memory's keys/values: projected on the first
        call, reused on later ones (the memory does not change while a decoder generates).
        """
        if memory is not None and cache is not None and cache.keys[layer] is not None:
            q, k, v = self._heads(self.q_proj(x)), cache.keys[layer], cache.values[layer]  # (B, nh, T|S, hs)
        else:
            if hasattr(self, "qkv") and memory is None:
                q, k, v = self.qkv(x).split(self.dim, dim=-1)
            elif memory is None and not torch.is_grad_enabled():  # inference: one product, not three
                q, k, v = F.linear(x, *self._stacked_qkv()).split(self.dim, dim=-1)
            else:
                src = x if memory is None else memory
                q, k, v = self.q_proj(x), self.k_proj(src), self.v_proj(src)
            if unpadded is not None:  # (N, C) -> (B, T, C): attention needs each sentence's positions
                q, k, v = unpadded.pad(q), unpadded.pad(k), unpadded.pad(v)
            q, k, v = self._heads(q), self._heads(k), self._heads(v)  # (B, nh, T, hs)
            if self.rotary is not None:
                if positions is None and cache is not None:  # continue after the cached positions
                    past = 0 if cache.keys[layer] is None else cache.keys[layer].size(-2)
                    positions = torch.arange(past, past + q.size(-2), device=q.device)[None]  # (1, T)
                q, k = self.rotary(q, positions), self.rotary(k, positions)
            if cache is not None:
                k, v = cache.update(layer, k, v)
        # plain causal self-attention needs no mask tensor: the fused kernels apply it themselves
        is_causal = mask is None and causal and key_padding is None and q.size(-2) == k.size(-2)
        if mask is None and not is_causal:
            mask = attention_mask(q.size(-2), k.size(-2), causal=causal, key_padding=key_padding,
                                  dtype=q.dtype, device=q.device)
        y, weights = scaled_dot_product_attention(
            q, k, v, mask, is_causal=is_causal, dropout_p=self.dropout if self.training else 0.0,
            impl=self.impl, return_weights=return_weights,
        )
        y = y.transpose(1, 2).reshape(q.size(0), q.size(2), self.dim)  # (B, T, C)
        if unpadded is not None:
            y = unpadded.unpad(y)  # (N, C)
        out = self.out_proj(y)
        return (out, weights) if return_weights else out
