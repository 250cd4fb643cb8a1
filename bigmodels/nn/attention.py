"""Attention: a readable reference, the fused PyTorch kernel, multi-head attention with masks and a KV cache.

Scaled dot-product attention (Vaswani et al. 2017, eq. 1)::

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k) + M) V

where M is an additive mask (0 where a query may look, a very large negative number where it may not).
``impl="reference"`` computes exactly that and can return the attention weights for inspection;
``impl="sdpa"`` calls ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient /
cuDNN kernels where the device has them). Both take the same masks and agree to float rounding.

On the reference path the softmax weights (B, nh, Tq, Tk) pass through an :class:`AttentionProbs` child of
each attention module, so a forward hook on it reads the attention maps; :func:`reference_attention`
switches a whole model to that path for as long as the maps are wanted. :func:`pack_qkv_` and
:func:`unpack_qkv_` are the explicit, reversible q/k/v packing that inference may apply on purpose.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import Counter, OrderedDict
from collections.abc import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .._files import cpu_info
from ..errors import ConfigError
from . import kernels
from .padding import Unpadded

__all__ = [
    "ATTENTION_IMPLS",
    "scaled_dot_product_attention",
    "attention_mask",
    "KVCache",
    "StaticKVCache",
    "AttentionProbs",
    "MultiHeadAttention",
    "pack_qkv_",
    "unpack_qkv_",
    "attention_modules",
    "set_attention_impl",
    "reference_attention",
]

log = logging.getLogger(__name__)

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


def _cpu_is_amd() -> bool:
    """Whether this is an AMD x86 CPU (its vendor_id in /proc/cpuinfo); False where that cannot be read."""
    return "AuthenticAMD" in cpu_info()


# On the CPU the fused kernel loses to two batched matrix products for short keys (sentences): measured
# 20-25% slower at T = 12..30 (batch 64, 12 heads of 32, 2 threads, torch 2.13) on an AMD EPYC, 1.1-1.75x at
# T = 16..40 (batch 32-64) on an Intel Xeon with AMX. Without a causal mask, on the AMD EPYC it also loses up to
# 128 keys, 1.2-1.45x slower (heads of 32 and 64, batch 1 to 32, with and without padding), provided the products
# run over chunks of the batch whose score matrices stay small (at most 2^18 scores): over a whole batch of
# 32 x 128 tokens their large temporaries made them 0.5-1.4x from run to run. At 256 keys the two are even
# (1.03x), at 512 the fused kernel wins by 1.7-2x. On the Intel Xeon the fused kernel wins from 48 keys on
# (1.1-1.8x at 48-128 keys, batch 1 to 32), so there the route stops at 40 (benchmarks/cpu_attention.py, which
# prints where this CPU routes each shape). GPUs always fuse.
_CPU_MATH_MAX_KEYS = 32
_CPU_MATH_MAX_KEYS_NONCAUSAL = 128 if _cpu_is_amd() else 40
_CPU_MATH_CHUNK_SCORES = 1 << 18  # scores per chunk of the batch on the CPU route


def _math_is_faster(q: torch.Tensor, k: torch.Tensor, is_causal: bool = False) -> bool:
    if q.device.type != "cpu":
        return False
    keys = k.size(-2)
    return keys <= _CPU_MATH_MAX_KEYS or (not is_causal and keys <= _CPU_MATH_MAX_KEYS_NONCAUSAL)


def _one_query_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                      is_causal: bool, dropout_p: float) -> bool:
    """Whether this is a decoding step's attention that ``bigmodels_cpu::one_query_attention`` takes: one float32
    query per row and head on the CPU, no dropout, no gradient, not traced for export (the operator is ours, not
    ONNX's), the kernels built (:mod:`bigmodels.nn.kernels`). Measured at GPT-2's 12 heads x 128 keys on 2 threads:
    14 us against F.scaled_dot_product_attention's 28 (``python benchmarks/cpu_attention.py --one-query``)."""
    if q.device.type != "cpu" or q.dim() != 4 or q.size(-2) != 1 or dropout_p or (is_causal and k.size(-2) != 1):
        return False
    if not (q.dtype == k.dtype == v.dtype == torch.float32) or not q.stride(-1) == k.stride(-1) == v.stride(-1) == 1:
        return False
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return False
    return kernels.usable()


def _products(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
              dropout_p: float) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v as two matrix products, over chunks of the batch of at most
    ``_CPU_MATH_CHUNK_SCORES`` scores each (one sequence at least)."""
    if torch.compiler.is_compiling():  # traced (torch.export, compile): one chunk, no branch on the batch size
        return _chunk(q, k, v, mask, dropout_p)
    per_row = q[0].numel() // q.size(-1) * k.size(-2)  # scores of one sequence
    step = max(1, _CPU_MATH_CHUNK_SCORES // max(per_row, 1))
    if step >= q.size(0):
        return _chunk(q, k, v, mask, dropout_p)
    outs = []
    for i in range(0, q.size(0), step):
        part = mask[i:i + step] if mask is not None and mask.dim() == 4 and mask.size(0) == q.size(0) else mask
        outs.append(_chunk(q[i:i + step], k[i:i + step], v[i:i + step], part, dropout_p))
    return torch.cat(outs)


def _chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
           dropout_p: float) -> torch.Tensor:
    weights = _weights(q, k, mask)
    return (F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights) @ v


def _weights(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) over the keys (softmax in float32): (B, nh, Tq, Tk)."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
    if mask is not None:
        scores = scores + mask.to(scores.dtype)
    return scores.float().softmax(dim=-1).to(q.dtype)


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
    probs: nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """softmax(q k^T / sqrt(d) + mask) v for q (B, nh, Tq, hs), k and v (B, nh, Tk, hs).

    ``is_causal`` applies a causal mask without a mask tensor (queries and keys aligned). Returns (output
    (B, nh, Tq, hs), weights (B, nh, Tq, Tk) or None). Asking for the weights uses the reference path,
    since the fused kernel never materialises them. ``probs`` (an :class:`AttentionProbs`) takes the
    softmax weights on the reference path (``impl="reference"`` or ``return_weights``) and applies the
    dropout there instead of ``dropout_p``; the returned weights are those before it.
    """
    if impl not in ATTENTION_IMPLS:
        raise ConfigError(f"attention impl {impl!r} is not valid; choose one of {', '.join(ATTENTION_IMPLS)}")
    if impl == "sdpa" and not return_weights and _one_query_kernel(q, k, v, mask, is_causal, dropout_p):
        mask = mask.to(q.dtype) if mask is not None else None
        return torch.ops.bigmodels_cpu.one_query_attention(q, k, v, mask, 1.0 / math.sqrt(q.size(-1))), None
    if impl == "sdpa" and not return_weights and not _math_is_faster(q, k, is_causal):
        mask = mask.to(q.dtype) if mask is not None else None
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal), None
    if is_causal:
        mask = attention_mask(q.size(-2), k.size(-2), causal=True, dtype=q.dtype, device=q.device)
    if impl == "sdpa" and not return_weights:  # the CPU route of the matrix products (weights not kept)
        return _products(q, k, v, mask, dropout_p), None
    weights = _weights(q, k, mask)  # the reference path, or weights asked for: they are returned
    if probs is not None:
        out = probs(weights) @ v  # (B, nh, Tq, hs)
    else:
        out = F.dropout(weights, p=dropout_p) @ v if dropout_p > 0 else weights @ v
    return out, weights


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

    ``num_heads`` is one count for every layer, or one per layer (a model whose heads were pruned,
    :func:`~bigmodels.compress.prune_structured_`, keeps a different number in each).

    >>> cache = StaticKVCache(2, batch_size=1, num_heads=4, max_length=16, head_dim=8)
    >>> k = v = torch.randn(1, 4, 3, 8)
    >>> cache.update(0, k, v)[0].shape, cache.update(1, k, v)[0].shape
    (torch.Size([1, 4, 16, 8]), torch.Size([1, 4, 16, 8]))
    >>> len(cache)
    3
    >>> [t.shape[1] for t in StaticKVCache(2, batch_size=1, num_heads=[3, 1], max_length=16, head_dim=8).keys]
    [3, 1]
    """

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_heads: int | Sequence[int],
        max_length: int,
        head_dim: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        for name, value in (("num_layers", num_layers), ("batch_size", batch_size), ("max_length", max_length),
                            ("head_dim", head_dim)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"StaticKVCache {name}={value!r} must be a positive int")
        heads = [num_heads] * num_layers if isinstance(num_heads, int) else list(num_heads)
        if len(heads) != num_layers or not all(isinstance(h, int) and h >= 1 for h in heads):
            raise ConfigError(f"StaticKVCache num_heads={num_heads!r} must be a positive int, or one per layer "
                              f"({num_layers} layers)")
        self.num_layers, self.batch_size, self.max_length, self.dtype = num_layers, batch_size, max_length, dtype
        self.keys = [torch.zeros(batch_size, h, max_length, head_dim, dtype=dtype, device=device) for h in heads]
        self.values = [torch.zeros(batch_size, h, max_length, head_dim, dtype=dtype, device=device) for h in heads]
        device = self.keys[0].device
        self.position = torch.zeros(1, dtype=torch.long, device=device)  # (1,): slots written so far
        self._arange = torch.arange(max_length, device=device)  # (L,): slot numbers, allocated once
        self._index = self.position  # (T,): the slots the current forward pass writes (set at layer 0)
        self.visible: int | None = None  # set by narrow(): update returns the slots written so far only

    def __len__(self) -> int:
        """Positions written (reads the device position: a sync, which decoding itself never needs)."""
        return int(self.position.item())

    def slots(self, q_len: int) -> torch.Tensor:
        """The buffer slots (q_len,) the next ``q_len`` new positions are written to."""
        return self._arange[:q_len] + self.position

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, nh, T_new, hs) at the next slots; returns the full (B, nh, max_length, hs) buffers, or
        after :meth:`narrow` views of the slots written so far (B, nh, visible, hs)."""
        if layer == 0:
            self._index = self.slots(k.size(-2))  # (T_new,)
        self.keys[layer].index_copy_(2, self._index, k.to(self.dtype))
        self.values[layer].index_copy_(2, self._index, v.to(self.dtype))
        if layer == self.num_layers - 1:
            self.position.add_(k.size(-2))  # in place: the tensor keeps its address
        if self.visible is not None:
            return self.keys[layer][:, :, : self.visible], self.values[layer][:, :, : self.visible]
        return self.keys[layer], self.values[layer]

    def narrow(self, q_len: int | None) -> int | None:
        """Let the next forward pass (``q_len`` new positions) attend over the slots written by then only:
        :meth:`update` returns views of the first ``position + q_len`` slots, so attention skips the unwritten
        ones instead of masking them (eager decoding on the CPU: at batch 8 the fused kernel over the whole
        buffer and its mask took 3.4 ms of a 20 ms GPT-2 step). Reads the position on the host, so not for a
        compiled or CUDA-graph step, whose shapes must stay fixed: ``narrow(None)`` restores the whole buffers.
        Returns the visible length (or None)."""
        self.visible = None if q_len is None else int(self.position) + q_len
        return self.visible

    def mask(self, q_len: int, key_padding: torch.Tensor | None = None, *,
             dtype: torch.dtype | None = None) -> torch.Tensor:
        """Additive mask (B or 1, 1, q_len, L) for the next ``q_len`` queries over the keys :meth:`update`
        returns: the whole buffer (L = max_length), or after :meth:`narrow` the visible slots (L = visible).

        Query i (at slot position + i) sees the slots up to its own: causal, and the unwritten ones hidden.
        ``key_padding`` (B, max_length): 1 for real tokens, 0 for (left) padding, over the whole buffer.
        """
        dtype = dtype or self.dtype
        L = self.max_length if self.visible is None else self.visible
        allowed = self._arange[None, :L] <= self.slots(q_len)[:, None]  # (q_len, L)
        allowed = allowed[None, None]  # (1, 1, q_len, L)
        if key_padding is not None:
            allowed = allowed & key_padding[:, :L].bool()[:, None, None, :]  # (B, 1, q_len, L)
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


class AttentionProbs(nn.Module):
    """The attention probabilities' own module: takes the softmax weights (B, nh, Tq, Tk), applies attention
    dropout (``p``, in training mode only) and returns them.

    Every attention module owns one, so ``register_forward_hook`` on it reads the attention maps. Only the
    reference path materialises them: switch a model there with :func:`reference_attention`.

    >>> probs = AttentionProbs(0.1).eval()
    >>> w = torch.rand(1, 2, 3, 3).softmax(-1)
    >>> torch.equal(probs(w), w)
    True
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"attention dropout p={p!r} must be in [0, 1)")
        self.p = p

    def forward(self, weights: torch.Tensor) -> torch.Tensor:
        return F.dropout(weights, self.p, self.training) if self.p > 0 else weights

    def extra_repr(self) -> str:
        return f"p={self.p}"


_QKV = ("q_proj", "k_proj", "v_proj")


class MultiHeadAttention(nn.Module):
    """Multi-head attention: project to heads, attend, merge heads, project out.

    ``fused_qkv`` keeps one (dim -> 3*dim) projection ``qkv`` (GPT-2's layout, one matrix product instead of
    three); otherwise q_proj / k_proj / v_proj (BERT's layout). :func:`pack_qkv_` turns the latter into the
    former on purpose (one matrix product at inference), keeping the state dict's q_proj / k_proj / v_proj names.
    ``cross_attention`` marks a module that attends to a ``memory`` (keys and values from another sequence):
    its projections stay separate. The forward is the same computation through the same submodules in every
    grad mode; the attention weights pass through ``probs`` (an :class:`AttentionProbs`) on the reference path.

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
        cross_attention: bool = False,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"the model width {dim} must be divisible by the number of heads {num_heads}")
        if impl not in ATTENTION_IMPLS:
            raise ConfigError(f"attention impl {impl!r} is not valid; choose one of {', '.join(ATTENTION_IMPLS)}")
        if fused_qkv and cross_attention:
            raise ConfigError("cross_attention=True needs separate projections (queries from x, keys and values "
                              "from the memory); build it with fused_qkv=False")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.impl, self.rotary, self.cross_attention = impl, rotary, cross_attention
        self.qkv_packed = False  # True once pack_qkv_ has replaced q_proj / k_proj / v_proj by ``qkv``
        if fused_qkv:
            self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        else:
            self.q_proj = nn.Linear(dim, dim, bias=bias)
            self.k_proj = nn.Linear(dim, dim, bias=bias)
            self.v_proj = nn.Linear(dim, dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)
        self.probs = AttentionProbs(dropout)
        # a packed module saves and loads its state under the separate projections' names (no-ops otherwise)
        self.register_state_dict_post_hook(_save_packed_qkv_as_separate)
        self.register_load_state_dict_pre_hook(_load_separate_qkv_into_packed)

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
        fused = "qkv" in self._modules
        if memory is not None and fused:
            raise ConfigError("this attention module projects q/k/v with one packed matrix, which cannot attend "
                              "to a memory; build cross-attention with cross_attention=True (pack_qkv_ leaves it "
                              "separate) or call unpack_qkv_(model)")
        if memory is not None and cache is not None and cache.keys[layer] is not None:
            q, k, v = self._heads(self.q_proj(x)), cache.keys[layer], cache.values[layer]  # (B, nh, T|S, hs)
        else:
            if fused:
                q, k, v = self.qkv(x).split(self.dim, dim=-1)  # one matrix product: (B, T, C) x 3
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
        # plain causal self-attention needs no mask tensor: the fused kernels apply it themselves. Without a cache or
        # a memory the queries and keys are the same positions, known without comparing (symbolic, under export)
        # sizes, so is_causal stays a Python bool for torch.onnx.export / torch.export
        same_positions = (cache is None and memory is None) or q.size(-2) == k.size(-2)
        is_causal = bool(mask is None and causal and key_padding is None and same_positions)
        # one query after cached keys, causal, no padding: it is the last position and sees every key
        sees_all = bool(mask is None and causal and key_padding is None and not same_positions and q.size(-2) == 1)
        if mask is None and not is_causal and not sees_all:
            mask = attention_mask(q.size(-2), k.size(-2), causal=causal, key_padding=key_padding,
                                  dtype=q.dtype, device=q.device)
        y, weights = scaled_dot_product_attention(
            q, k, v, mask, is_causal=is_causal, dropout_p=self.probs.p if self.probs.training else 0.0,
            impl=self.impl, return_weights=return_weights, probs=self.probs,
        )
        y = y.transpose(1, 2).reshape(q.size(0), q.size(2), self.dim)  # (B, T, C)
        if unpadded is not None:
            y = unpadded.unpad(y)  # (N, C)
        out = self.out_proj(y)
        return (out, weights) if return_weights else out


# ------------------------------------------------------------------------------------------------ q/k/v packing
# Three (C -> C) projections of the same input are one (C -> 3C) projection with the matrices stacked
# row-wise, [W_q; W_k; W_v]: one matrix product instead of three (what GPT-2's c_attn does natively).


def _save_packed_qkv_as_separate(module: MultiHeadAttention, state_dict, prefix: str, local_metadata) -> None:
    """State-dict post-hook: a packed module's ``qkv.{weight,bias}`` saved as the q/k/v projections' entries.

    Runs after the module's subtree is saved, so its entries are the last ones: they are rebuilt in order,
    each split copied (three views of one storage would be shared tensors, which safetensors refuses)."""
    if not getattr(module, "qkv_packed", False) or prefix + "qkv.weight" not in state_dict:
        return
    keys = list(state_dict)
    tail = [(k, state_dict.pop(k)) for k in keys[keys.index(prefix + "qkv.weight"):]]
    for key, value in tail:
        if key == prefix + "qkv.weight":  # q_proj.weight, q_proj.bias, k_proj.weight, ...: nn.Linear's order
            bias = dict(tail).get(prefix + "qkv.bias")
            for i, proj in enumerate(_QKV):
                state_dict[f"{prefix}{proj}.weight"] = value.chunk(3, dim=0)[i].clone()  # (C, C)
                if bias is not None:
                    state_dict[f"{prefix}{proj}.bias"] = bias.chunk(3, dim=0)[i].clone()  # (C,)
        elif key != prefix + "qkv.bias":
            state_dict[key] = value


def _load_separate_qkv_into_packed(module: MultiHeadAttention, state_dict, prefix: str, local_metadata, strict,
                                   missing_keys, unexpected_keys, error_msgs) -> None:
    """Load-state-dict pre-hook: q/k/v projection entries stacked into a packed module's ``qkv`` entries."""
    if not getattr(module, "qkv_packed", False):
        return
    for kind in ("weight", "bias"):
        names = [f"{prefix}{proj}.{kind}" for proj in _QKV]
        if all(name in state_dict for name in names):
            state_dict[f"{prefix}qkv.{kind}"] = torch.cat([state_dict.pop(name) for name in names])


def _swap_children(module: nn.Module, old: tuple[str, ...], new: Mapping[str, nn.Module]) -> None:
    """Replace children ``old`` by ``new``, at the position of the first old one (so printing and the state
    dict keep the module's order)."""
    children: OrderedDict[str, nn.Module | None] = OrderedDict()
    for name, child in module._modules.items():
        if name == old[0]:
            children.update(new)
        elif name not in old:
            children[name] = child
    module._modules = children


def _plain_linear(m: nn.Module) -> bool:
    """An unmodified nn.Linear: no subclass (LoRA, quantized), no hook, no parametrization (pruning)."""
    return (type(m) is nn.Linear and not (m._forward_hooks or m._forward_pre_hooks)
            and not parametrize.is_parametrized(m))


def _why_not_pack(m: MultiHeadAttention, shared: set[int]) -> str | None:
    projs = [getattr(m, name) for name in _QKV]
    if not all(_plain_linear(p) for p in projs):
        return "a projection is not a plain nn.Linear, or has a hook or a parametrization"
    params = [t for p in projs for t in (p.weight, p.bias)]
    if len({(t is None, None if t is None else (t.dtype, t.device)) for t in params}) != 1:
        return "the projections differ in bias, dtype or device"
    if any(id(t) in shared for t in params if t is not None):
        return "a projection's weight is shared with another module"
    return None


def pack_qkv_(model: nn.Module) -> int:
    """Pack the q_proj / k_proj / v_proj of every self-attention :class:`MultiHeadAttention` in ``model`` into
    one (C -> 3C) Linear ``qkv``, in place; returns how many modules were packed.

    One matrix product instead of three: fewer kernel launches (on 2 CPU threads all-MiniLM-L6-v2 embedding
    measured the same speed either way). Outputs equal the unpacked model's to float rounding. The state dict
    keeps the q_proj / k_proj / v_proj names, so ``save`` / ``load`` / Hugging Face export work unchanged and
    unpacked checkpoints load into a packed model.
    Left as they are: cross-attention modules, natively fused ones (GPT-2), modules already packed, and
    projections that are not plain ``nn.Linear`` (a LoRA or quantized layer, a hook, a parametrization; logged).
    :func:`unpack_qkv_` restores separate projections.

    >>> import bigmodels
    >>> model = bigmodels.create_model("bert_mini").eval()
    >>> pack_qkv_(model), "layers.0.attn.q_proj.weight" in model.state_dict()
    (4, True)
    >>> unpack_qkv_(model)
    4
    """
    counts = Counter(id(p) for _, m in model.named_modules(remove_duplicate=False) for p in m._parameters.values())
    shared = {key for key, n in counts.items() if n > 1}
    todo = [(name, m) for name, m in model.named_modules()
            if isinstance(m, MultiHeadAttention) and "qkv" not in m._modules and not m.cross_attention]
    packed = 0
    for name, m in todo:
        reason = _why_not_pack(m, shared)
        if reason is not None:
            log.warning("pack_qkv_: %s left unpacked: %s", name or "the model", reason)
            continue
        projs = [getattr(m, proj) for proj in _QKV]
        w = projs[0].weight
        with torch.inference_mode(False), torch.no_grad():  # normal parameters even if called under inference_mode
            qkv = nn.utils.skip_init(nn.Linear, m.dim, 3 * m.dim, bias=projs[0].bias is not None, device=w.device,
                                     dtype=w.dtype)
            qkv.weight.copy_(torch.cat([p.weight for p in projs]))  # (3C, C) = [W_q; W_k; W_v]
            if qkv.bias is not None:
                qkv.bias.copy_(torch.cat([p.bias for p in projs]))  # (3C,)
        qkv.weight.requires_grad_(w.requires_grad)
        if qkv.bias is not None:
            qkv.bias.requires_grad_(projs[0].bias.requires_grad)
        qkv.train(projs[0].training)
        _swap_children(m, _QKV, {"qkv": qkv})
        m.qkv_packed = True
        packed += 1
    return packed


def unpack_qkv_(model: nn.Module) -> int:
    """Undo :func:`pack_qkv_`: every packed :class:`MultiHeadAttention` gets back q_proj / k_proj / v_proj with
    the same weights, in place; returns how many modules were unpacked (natively fused ones stay fused).

    >>> mha = MultiHeadAttention(16, 2, fused_qkv=False)
    >>> pack_qkv_(mha), hasattr(mha, "q_proj"), unpack_qkv_(mha), hasattr(mha, "q_proj")
    (1, False, 1, True)
    """
    todo = [(name, m) for name, m in model.named_modules() if isinstance(m, MultiHeadAttention) and m.qkv_packed]
    unpacked = 0
    for name, m in todo:
        if not _plain_linear(m.qkv):
            log.warning("pack_qkv_: %s left packed: its qkv is no longer a plain nn.Linear, or has a hook or a "
                        "parametrization", name or "the model")
            continue
        w, b = m.qkv.weight, m.qkv.bias
        projs = {}
        with torch.inference_mode(False), torch.no_grad():
            for i, proj in enumerate(_QKV):
                lin = nn.utils.skip_init(nn.Linear, m.dim, m.dim, bias=b is not None, device=w.device, dtype=w.dtype)
                lin.weight.copy_(w[i * m.dim:(i + 1) * m.dim])
                lin.weight.requires_grad_(w.requires_grad)
                if b is not None:
                    lin.bias.copy_(b[i * m.dim:(i + 1) * m.dim])
                    lin.bias.requires_grad_(b.requires_grad)
                projs[proj] = lin.train(m.qkv.training)
        _swap_children(m, ("qkv",), projs)
        m.qkv_packed = False
        unpacked += 1
    return unpacked


# ------------------------------------------------------------------------------------------- implementation switch


def attention_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, module) of every attention module in ``model``: those with an ``impl`` and an
    :class:`AttentionProbs` child (:class:`MultiHeadAttention`, ViT's self-attention, ...)."""
    for name, m in model.named_modules():
        if isinstance(getattr(m, "impl", None), str) and any(isinstance(c, AttentionProbs) for c in m.children()):
            yield name, m


def set_attention_impl(model: nn.Module, impl: str | Mapping[str, str]) -> dict[str, str]:
    """Set the ``impl`` (``"sdpa"`` | ``"reference"``) of every attention module of ``model``; returns the
    previous ones by module name, which passed back as ``impl`` restore them. The model's config is unchanged.

    >>> import bigmodels
    >>> model = bigmodels.create_model("gpt_mini")
    >>> before = set_attention_impl(model, "reference")
    >>> sorted(set(before.values())), model.blocks[0].attn.impl
    (['sdpa'], 'reference')
    >>> _ = set_attention_impl(model, before)
    """
    modules = dict(attention_modules(model))
    if isinstance(impl, str):
        wanted = dict.fromkeys(modules, impl)
    else:
        unknown = sorted(set(impl) - set(modules))
        if unknown:
            raise ConfigError(f"set_attention_impl: {', '.join(unknown[:5])} not attention modules of this model; "
                              "pass the dict a previous call returned, or an impl name")
        wanted = dict(impl)
    for value in wanted.values():
        if value not in ATTENTION_IMPLS:
            raise ConfigError(f"attention impl {value!r} is not valid; choose one of {', '.join(ATTENTION_IMPLS)}")
    previous = {name: modules[name].impl for name in wanted}
    for name, value in wanted.items():
        modules[name].impl = value
    return previous


@contextlib.contextmanager
def reference_attention(model: nn.Module) -> Iterator[nn.Module]:
    """Run every attention module of ``model`` on the reference path inside the block, so hooks on its
    :class:`AttentionProbs` modules see the attention maps; the previous impls come back on exit.

    >>> import bigmodels
    >>> model, maps = bigmodels.create_model("bert_mini").eval(), []
    >>> handles = [m.probs.register_forward_hook(lambda mod, i, out: maps.append(out))
    ...            for _, m in attention_modules(model)]
    >>> with reference_attention(model), torch.no_grad():
    ...     _ = model(torch.randint(0, 100, (1, 6)))
    >>> len(maps), tuple(maps[0].shape)  # one map per layer: (B, nh, Tq, Tk)
    (4, (1, 4, 6, 6))
    """
    previous = set_attention_impl(model, "reference")
    try:
        yield model
    finally:
        set_attention_impl(model, previous)
