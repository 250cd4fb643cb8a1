"""GPT: a decoder-only Transformer language model with the GPT-2 architecture (Radford et al. 2019).

Pre-LN blocks (x + attn(ln_1(x)), then x + mlp(ln_2(x))), learned positions, the GELU tanh approximation
("gelu_new"), a final LayerNorm and an output layer tied to the token embedding. Module names follow
nanoGPT (``wte``, ``wpe``, ``blocks[i].attn``, ``ln_f``, ``lm_head``); ``interop/hf_gpt2.py`` maps them to
Hugging Face's ``transformer.h.{i}...`` so real GPT-2 checkpoints load with ``bigmodels.load``.

Decoding (:mod:`bigmodels.infer.generate`) runs the prompt once and then one token per step through a
:class:`~bigmodels.nn.KVCache`; left-padded batches pass an ``attention_mask``::

    >>> import bigmodels, torch
    >>> model = bigmodels.create_model("gpt_mini").eval()
    >>> cache = model.new_cache()
    >>> model(torch.tensor([[1, 2, 3]]), cache=cache).shape
    torch.Size([1, 3, 128])
    >>> model(torch.tensor([[4]]), cache=cache).shape  # the 4th token, at position 3
    torch.Size([1, 1, 128])

A :class:`~bigmodels.nn.StaticKVCache` (``new_cache(batch_size=..., static=True)``) is preallocated, so every
step has the same shapes (CUDA graphs); its ``attention_mask`` covers the whole buffer. Training computes
the loss from :meth:`GPT.forward_hidden` chunk by chunk (:func:`~bigmodels.nn.chunked_cross_entropy`), and
``pad_vocab_multiple=64`` rounds the embedding and output rows up (the logits keep ``vocab_size`` columns).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..config import check_choice, check_positive
from ..errors import ConfigError, DataError
from ..nn import (
    ATTENTION_IMPLS,
    KVCache,
    LearnedPositionalEmbedding,
    MultiHeadAttention,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    StaticKVCache,
)
from ..registry import register_family, register_model

__all__ = ["GPTConfig", "GPT"]

_ACTIVATIONS = {"gelu_tanh": lambda: nn.GELU(approximate="tanh"), "gelu": nn.GELU}
_POSITIONS = ("learned", "rotary", "sinusoidal")


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    block_size: int = 1024  # the context: positions 0 .. block_size - 1
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0  # embeddings, attention weights and both residual branches
    bias: bool = True  # biases in the linear layers and LayerNorms (GPT-2 has them)
    layer_norm_eps: float = 1e-5
    activation: str = "gelu_tanh"  # gelu_tanh (GPT-2's "gelu_new") | gelu (exact erf)
    tie_weights: bool = True  # lm_head shares the token embedding (Press & Wolf 2017)
    attn_impl: str = "sdpa"  # sdpa (fused kernels) | reference (readable, returns weights)
    position: str = "learned"  # learned (GPT-2) | rotary (Su et al. 2021) | sinusoidal (Vaswani et al. 2017)
    mlp_ratio: float = 4.0  # MLP hidden width = mlp_ratio * n_embd
    # embedding / output rows rounded up to a multiple (64: 50257 -> 50304, tensor-core friendly matrix
    # products, as nanoGPT does); the extra rows are no tokens: logits keep vocab_size columns
    pad_vocab_multiple: int = 1

    def __post_init__(self) -> None:
        for key in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "layer_norm_eps", "mlp_ratio",
                    "pad_vocab_multiple"):
            check_positive("gpt", key, getattr(self, key))
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"gpt.dropout={self.dropout!r} must be in [0, 1)")
        check_choice("gpt", "activation", self.activation, tuple(_ACTIVATIONS))
        check_choice("gpt", "attn_impl", self.attn_impl, ATTENTION_IMPLS)
        check_choice("gpt", "position", self.position, _POSITIONS)
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"gpt.n_embd={self.n_embd} must be divisible by gpt.n_head={self.n_head}; pick n_head among "
                f"{[h for h in range(1, min(self.n_embd, 64) + 1) if self.n_embd % h == 0]}"
            )
        if self.position == "rotary" and (self.n_embd // self.n_head) % 2:
            raise ConfigError(
                f"gpt.position=rotary rotates channel pairs: the head width n_embd/n_head="
                f"{self.n_embd // self.n_head} must be even; change n_embd or n_head"
            )
        if abs(self.mlp_ratio * self.n_embd - self.mlp_hidden) > 1e-6:
            raise ConfigError(
                f"gpt.mlp_ratio={self.mlp_ratio} times n_embd={self.n_embd} is not a whole number of units; "
                "pick a ratio that gives an integer MLP width"
            )

    @property
    def mlp_hidden(self) -> int:
        return round(self.mlp_ratio * self.n_embd)

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding and output matrices: vocab_size rounded up to pad_vocab_multiple."""
        return -(-self.vocab_size // self.pad_vocab_multiple) * self.pad_vocab_multiple


class MLP(nn.Module):
    """Position-wise feed-forward: fc (C -> 4C), GELU, proj (4C -> C)."""

    def __init__(self, c: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(c.n_embd, c.mlp_hidden, bias=c.bias)
        self.act = _ACTIVATIONS[c.activation]()
        self.proj = nn.Linear(c.mlp_hidden, c.n_embd, bias=c.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.fc(x)))


class Block(nn.Module):
    """Pre-LN Transformer decoder block (GPT-2, sec. 2.3): x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, c: GPTConfig) -> None:
        super().__init__()
        rotary = RotaryEmbedding(c.n_embd // c.n_head) if c.position == "rotary" else None
        self.ln_1 = nn.LayerNorm(c.n_embd, eps=c.layer_norm_eps, bias=c.bias)
        self.attn = MultiHeadAttention(c.n_embd, c.n_head, bias=c.bias, dropout=c.dropout, fused_qkv=True,
                                       impl=c.attn_impl, rotary=rotary)
        self.ln_2 = nn.LayerNorm(c.n_embd, eps=c.layer_norm_eps, bias=c.bias)
        self.mlp = MLP(c)
        self.drop = nn.Dropout(c.dropout)  # residual dropout (GPT-2's resid_pdrop) on both branches

    def forward(self, x, *, key_padding=None, mask=None, cache=None, layer=0, positions=None) -> torch.Tensor:
        a = self.attn(self.ln_1(x), causal=True, key_padding=key_padding, mask=mask, cache=cache, layer=layer,
                      positions=positions)
        x = x + self.drop(a)
        return x + self.drop(self.mlp(self.ln_2(x)))  # (B, T, C)


class GPT(nn.Module):
    """Token ids (B, T) -> next-token logits (B, T, vocab_size).

    >>> model = GPT(GPTConfig(vocab_size=100, block_size=32, n_layer=2, n_head=2, n_embd=32))
    >>> model(torch.randint(0, 100, (2, 8))).shape
    torch.Size([2, 8, 100])
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = c = config
        self.wte = nn.Embedding(c.padded_vocab_size, c.n_embd)
        if c.position == "learned":
            self.wpe = LearnedPositionalEmbedding(c.block_size, c.n_embd)
        elif c.position == "sinusoidal":
            self.wpe = SinusoidalPositionalEncoding(c.block_size, c.n_embd)
        else:  # rotary: positions enter each attention layer, not the residual stream
            self.wpe = None
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd, eps=c.layer_norm_eps, bias=c.bias)
        self.lm_head = nn.Linear(c.n_embd, c.padded_vocab_size, bias=False)
        self.apply(self._init_weights)
        # GPT-2 sec. 2.3: scale the residual projections by 1/sqrt(N), N = 2 residual branches per layer
        for name, p in self.named_parameters():
            if name.endswith(("attn.out_proj.weight", "mlp.proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layer))
        if c.tie_weights:
            self.lm_head.weight = self.wte.weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def new_cache(
        self,
        batch_size: int | None = None,
        max_length: int | None = None,
        *,
        static: bool = False,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> KVCache | StaticKVCache:
        """An empty key/value cache for incremental decoding with this model.

        By default a growing :class:`~bigmodels.nn.KVCache`. With ``static=True``, a preallocated
        :class:`~bigmodels.nn.StaticKVCache` of ``batch_size`` rows and ``max_length`` positions (default:
        block_size), in ``dtype`` on ``device`` (default: the model's).

        >>> model = GPT(GPTConfig(vocab_size=100, block_size=32, n_layer=2, n_head=2, n_embd=32))
        >>> model.new_cache(batch_size=3, max_length=20, static=True).keys[0].shape
        torch.Size([3, 2, 20, 16])
        """
        c = self.config
        if not static:
            given = {k: v for k, v in (("batch_size", batch_size), ("max_length", max_length), ("dtype", dtype),
                                       ("device", device)) if v is not None}
            if given:
                raise ConfigError(f"new_cache({', '.join(given)}=...) sizes a preallocated cache: pass static=True "
                                  "too, or nothing for a growing cache")
            return KVCache(c.n_layer)
        if batch_size is None:
            raise ConfigError("new_cache(static=True) preallocates its buffers: pass batch_size=<rows>")
        max_length = c.block_size if max_length is None else max_length
        if not isinstance(max_length, int) or not 0 < max_length <= c.block_size:
            raise ConfigError(f"new_cache(max_length={max_length!r}) must be in 1..{c.block_size} (the model's "
                              "block_size); prompt + new tokens cannot exceed the context")
        weight = self.wte.weight
        heads = [block.attn.num_heads for block in self.blocks]  # per layer: pruning may have removed some
        return StaticKVCache(c.n_layer, batch_size, heads, max_length, c.n_embd // c.n_head,
                             dtype=dtype or weight.dtype, device=device if device is not None else weight.device)

    def _positions(self, ids, attention_mask, positions, past: int) -> torch.Tensor:
        B, T = ids.shape
        if positions is not None:
            if positions.shape != (B, T):
                raise DataError(f"positions must have the shape of ids {(B, T)}, got {tuple(positions.shape)}")
            if self.wpe is not None and (positions.min() < 0 or positions.max() >= self.config.block_size):
                raise DataError(
                    f"positions must lie in 0..{self.config.block_size - 1} (the model's block_size), got "
                    f"{positions.min().item()}..{positions.max().item()}; truncate the input"
                )
            return positions
        if attention_mask is not None:
            # Hugging Face's convention for left padding: real tokens count from 0, padding sits at 0
            return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]  # (B, T)
        return torch.arange(past, past + T, device=ids.device)[None].expand(B, T)  # (B, T)

    def _dynamic_positions(self, ids, attention_mask, positions, cache: KVCache | None) -> torch.Tensor:
        """Check a call without a cache or with a growing one; positions (B, T)."""
        B, T = ids.shape
        past = len(cache) if cache is not None else 0
        if past + T > self.config.block_size:
            what = f"{past} cached + {T} new tokens" if past else f"{T} tokens"
            raise DataError(
                f"the sequence is {past + T} tokens ({what}) but the model's context (block_size) is "
                f"{self.config.block_size}; truncate the prompt, lower max_new_tokens, or use a model with a "
                "longer context"
            )
        if attention_mask is not None and attention_mask.shape != (B, past + T):
            raise DataError(
                f"attention_mask must be (batch, cached + new tokens) = {(B, past + T)}, got "
                f"{tuple(attention_mask.shape)}; pass the full running mask"
            )
        return self._positions(ids, attention_mask, positions, past)

    def _static_positions(self, ids, attention_mask, positions, cache: StaticKVCache) -> torch.Tensor:
        """Check a call with a static cache; positions (B, T) from the cache's write slots, without a sync."""
        B, T = ids.shape
        L = cache.max_length
        if cache.batch_size != B:
            raise DataError(f"the static cache holds {cache.batch_size} rows but ids have {B}; make it with "
                            f"new_cache(batch_size={B}, static=True)")
        if T > L:
            raise DataError(f"{T} new tokens do not fit the static cache of {L} positions; make a larger one with "
                            f"new_cache(max_length=...) (at most block_size={self.config.block_size})")
        if attention_mask is not None and attention_mask.shape != (B, L):
            raise DataError(
                f"with a static cache, attention_mask covers its whole buffer: (batch, max_length) = {(B, L)}, got "
                f"{tuple(attention_mask.shape)}; mark the (left) padding 0 and every other slot 1"
            )
        if positions is not None:
            return self._positions(ids, None, positions, 0)
        slots = cache.slots(T)  # (T,)
        if attention_mask is not None:  # Hugging Face's convention, as in _positions: real tokens count from 0
            return (attention_mask.long().cumsum(-1) - 1).clamp(min=0).index_select(1, slots)  # (B, T)
        return slots[None].expand(B, T)

    def forward(
        self,
        ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        cache: KVCache | StaticKVCache | None = None,
        logits_to_keep: int = 0,
    ) -> torch.Tensor:
        """ids (B, T) -> logits (B, T, vocab_size): the output layer on :meth:`forward_hidden`.

        ``attention_mask`` (B, T_cached + T): 1 for tokens, 0 for (left) padding, over the cached and the new
        positions (with a :class:`~bigmodels.nn.StaticKVCache`: (B, max_length), over its whole buffer).
        ``positions`` (B, T) default to continuing after the cache (or to the mask's running count of real
        tokens). With a ``cache``, ``ids`` are only the new tokens; their keys/values are appended.
        ``logits_to_keep=n`` > 0: logits (B, n, vocab_size) of the last n positions only (decoding reads the
        last one: the output layer, GPT-2's largest matrix, then runs on one row per sequence, not T).
        """
        if not isinstance(logits_to_keep, int) or logits_to_keep < 0:
            raise ConfigError(f"logits_to_keep={logits_to_keep!r} must be a whole number >= 0 (0 = every position)")
        hidden = self.forward_hidden(ids, attention_mask=attention_mask, positions=positions, cache=cache)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]  # (B, n, C)
        logits = self.lm_head(hidden)  # (B, T | n, padded V)
        V = self.config.vocab_size
        return logits if logits.size(-1) == V else logits[..., :V]  # padded rows are no tokens

    def forward_hidden(
        self,
        ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        cache: KVCache | StaticKVCache | None = None,
    ) -> torch.Tensor:
        """ids (B, T) -> the final hidden states ln_f(x) (B, T, C), before the output layer ``lm_head``.

        Arguments as :meth:`forward`. A loss can then go from hidden states to the targets a chunk at a time
        (:func:`~bigmodels.nn.chunked_cross_entropy`) instead of holding the (B, T, V) logits.
        """
        if ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
            raise DataError(f"expected token ids of shape (batch, time), got {tuple(ids.shape)} {ids.dtype}")
        if isinstance(cache, StaticKVCache):
            positions = self._static_positions(ids, attention_mask, positions, cache)
            # eager on the CPU: keys over the slots written so far (causal within the new ones); compiled or on
            # a GPU: over the whole buffer, the cache masking the slots not written yet (and the padding)
            visible = cache.narrow(ids.size(1) if ids.device.type == "cpu" and not torch.compiler.is_compiling()
                                   else None)
            # (B|1, 1, T, L) over the keys the cache returns; none needed over written slots without padding
            no_mask = visible is not None and attention_mask is None
            mask, key_padding = (None if no_mask else cache.mask(ids.size(1), attention_mask)), None
        else:
            positions = self._dynamic_positions(ids, attention_mask, positions, cache)
            mask, key_padding = None, attention_mask
        x = self.wte(ids)  # (B, T, C)
        if self.wpe is not None:
            x = x + self.wpe(positions)
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, key_padding=key_padding, mask=mask, cache=cache, layer=i, positions=positions)
        return self.ln_f(x)  # (B, T, C)


register_family("gpt", GPTConfig, GPT)

_LM = "language_modeling"
_GPT2_SIZES = {  # name: (n_layer, n_head, n_embd), as OpenAI released them
    "gpt2": (12, 12, 768),  # 124M
    "gpt2-medium": (24, 16, 1024),  # 350M
    "gpt2-large": (36, 20, 1280),  # 774M
    "gpt2-xl": (48, 25, 1600),  # 1558M
}
for _name, (_layers, _heads, _width) in _GPT2_SIZES.items():
    register_model(
        _name, family="gpt", task=_LM, compare=False,
        config=GPTConfig(n_layer=_layers, n_head=_heads, n_embd=_width),
        description=f"OpenAI GPT-2 ({_layers} layers, width {_width}); loads Hugging Face GPT-2 weights",
    )
register_model(
    "gpt_char", family="gpt", task=_LM, compare=False,
    config=GPTConfig(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2, bias=False),
    description="nanoGPT's Shakespeare-char model: 6 layers, width 384, context 256 (10.7M params)",
)
register_model(
    "gpt_mini", family="gpt", task=_LM,
    config=GPTConfig(vocab_size=128, block_size=128, n_layer=4, n_head=4, n_embd=128),
    description="a small GPT for CPU runs: 4 layers, width 128, context 128",
)
