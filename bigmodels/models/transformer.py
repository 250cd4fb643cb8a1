"""Transformer (Vaswani et al. 2017, arXiv:1706.03762): the encoder-decoder for sequence-to-sequence tasks.

    source ids (B, S) -> E(x) * sqrt(d) + PE -> N x [self-attention, feed-forward]              -> memory (B, S, D)
    target ids (B, T), shifted right -> E(y) * sqrt(d) + PE
        -> N x [causal self-attention, attention on the memory, feed-forward] -> linear (tied to E) -> (B, T, V)

Every sub-layer is wrapped the same way, and ``norm_first`` picks where its LayerNorm sits: after the
residual sum (post-norm, the paper's sec. 3.1: LN(x + Sublayer(x))) or before the sub-layer (pre-norm:
x + Sublayer(LN(x)), plus a final LayerNorm after each stack; Wang et al. 2019, Xiong et al. 2020, which
trains deep stacks without a long warmup).

Module names follow Hugging Face's Marian (``MarianMTModel`` without its ``model.`` prefix:
``encoder.layers.{i}.self_attn.q_proj``, ``decoder.layers.{i}.encoder_attn``, ``final_layer_norm``, ...), so
``interop/hf_marian.py`` maps OPUS-MT checkpoints almost name for name. Decoding lives in
:mod:`bigmodels.infer.seq2seq`: the source is encoded once, then the decoder runs one token a step
through a cache (self-attention keys/values grow; the memory's cross-attention keys/values are made once)::

    >>> import bigmodels, torch
    >>> model = bigmodels.create_model("transformer_mini").eval()
    >>> src = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    >>> memory = model.encode(src, src.ne(0).long())
    >>> cache = model.new_cache()
    >>> model.decode(torch.tensor([[1], [1]]), memory, src.ne(0).long(), cache=cache).shape
    torch.Size([2, 1, 128])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..config import check_choice, check_positive
from ..errors import ConfigError, DataError
from ..nn import ATTENTION_IMPLS, KVCache, MultiHeadAttention, SinusoidalPositionalEncoding
from ..nn.attention import attention_mask as additive_mask
from ..registry import register_family, register_model

__all__ = ["TransformerConfig", "Transformer", "EncoderDecoderCache", "shift_right"]

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU}  # gelu: the exact erf form (Marian's)
# sinusoid layouts: "halves" = [sin(pos w_0 .. w_{d/2-1}) | cos(...)] (Marian, tensor2tensor); "interleaved" =
# sin on even channels, cos on odd ones (the paper's formula, sec. 3.5). A fixed permutation of the channels
# apart they are the same encoding; "halves" is the default so that every model exports to Marian.
_POSITIONS = ("halves", "interleaved")


@dataclass
class TransformerConfig:
    """Encoder-decoder hyper-parameters (Hugging Face-like names); defaults are the paper's base model."""

    src_vocab_size: int = 32000
    tgt_vocab_size: int = 32000  # equal to src_vocab_size when share_embeddings
    d_model: int = 512
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    num_heads: int = 8
    d_ff: int = 2048
    dropout: float = 0.1  # on embeddings + positions and on every residual branch (P_drop, sec. 5.4)
    attention_dropout: float = 0.0  # on the attention weights
    activation_dropout: float = 0.0  # inside the feed-forward, after the activation (Marian / fairseq)
    activation: str = "relu"  # relu (the paper) | gelu | swish (OPUS-MT)
    norm_first: bool = False  # False: post-norm (the paper); True: pre-norm, with a final LayerNorm per stack
    share_embeddings: bool = True  # one table for source and target (a joint vocabulary, sec. 3.4)
    tie_output: bool = True  # the output projection is the target embedding (Press & Wolf 2017)
    scale_embedding: bool = True  # multiply embeddings by sqrt(d_model) (sec. 3.4)
    max_position_embeddings: int = 256  # longest source, and longest decoder input, in tokens
    positions: str = "halves"  # sinusoid layout, see _POSITIONS (fixed, not learned)
    layernorm_embedding: bool = False  # a LayerNorm after embeddings + positions (BART; Marian has none)
    final_logits_bias: bool = False  # a fixed (non-trained) bias on the logits, as Marian's buffer
    pad_token_id: int = 0
    bos_token_id: int | None = 1  # None: the vocabulary has none (Marian starts the decoder on pad)
    eos_token_id: int = 2
    decoder_start_token_id: int | None = None  # None: bos_token_id (resolved when the config is built)
    attn_impl: str = "sdpa"  # sdpa (fused kernels) | reference (readable, returns weights)
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        o = "transformer"
        for key in ("src_vocab_size", "tgt_vocab_size", "d_model", "num_encoder_layers", "num_decoder_layers",
                    "num_heads", "d_ff", "max_position_embeddings", "layer_norm_eps"):
            check_positive(o, key, getattr(self, key))
        for key in ("dropout", "attention_dropout", "activation_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"{o}.{key}={getattr(self, key)!r} must be in [0, 1)")
        check_choice(o, "activation", self.activation, tuple(_ACTIVATIONS))
        check_choice(o, "attn_impl", self.attn_impl, ATTENTION_IMPLS)
        check_choice(o, "positions", self.positions, _POSITIONS)
        if self.d_model % self.num_heads:
            raise ConfigError(f"{o}.d_model={self.d_model} must be divisible by {o}.num_heads={self.num_heads}; "
                              f"pick num_heads among {[h for h in range(1, 33) if self.d_model % h == 0]}")
        if self.d_model % 2:
            raise ConfigError(f"{o}.d_model={self.d_model} must be even: the sinusoids pair a sine with a cosine")
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ConfigError(f"{o}.share_embeddings=true needs one vocabulary, but src_vocab_size="
                              f"{self.src_vocab_size} != tgt_vocab_size={self.tgt_vocab_size}; give both the joint "
                              "vocabulary's size, or set share_embeddings=false")
        if self.decoder_start_token_id is None:
            if self.bos_token_id is None:
                raise ConfigError(f"{o}.decoder_start_token_id is needed when bos_token_id is null (Marian: the "
                                  "pad id)")
            self.decoder_start_token_id = self.bos_token_id
        ids = {"pad_token_id": min(self.src_vocab_size, self.tgt_vocab_size), "bos_token_id": self.tgt_vocab_size,
               "eos_token_id": self.tgt_vocab_size, "decoder_start_token_id": self.tgt_vocab_size}
        for key, limit in ids.items():
            value = getattr(self, key)
            if value is not None and not 0 <= value < limit:
                raise ConfigError(f"{o}.{key}={value} is not a token id of the vocabulary (0..{limit - 1}); give "
                                  "the tokenizer's id")


def shift_right(labels: torch.Tensor, decoder_start_token_id: int, pad_token_id: int) -> torch.Tensor:
    """Teacher forcing's decoder input: labels (B, T) -> [start, y_0 .. y_{T-2}], -100 (ignored) -> pad."""
    out = labels.new_full(labels.shape, decoder_start_token_id)
    out[:, 1:] = labels[:, :-1]
    return out.masked_fill(out == -100, pad_token_id)  # (B, T)


class EncoderDecoderCache:
    """What incremental decoding keeps per decoder layer: the self-attention keys/values of the tokens so far
    (they grow by one a step) and the cross-attention keys/values of the memory (made on the first step)."""

    def __init__(self, num_layers: int) -> None:
        self.self_attn, self.cross_attn = KVCache(num_layers), KVCache(num_layers)

    def __len__(self) -> int:
        """Target positions cached."""
        return len(self.self_attn)

    def reorder(self, index: torch.Tensor) -> None:
        """Select rows of the self-attention cache (beam search). The cross-attention keys/values stay: every
        beam of a source attends to the same memory, and beam search keeps each row within its source."""
        self.self_attn.reorder(index)


# ---------------------------------------------------------------------------------------------- blocks


class TransformerLayer(nn.Module):
    """An encoder layer (self-attention, feed-forward) or, with ``cross_attention``, a decoder layer (causal
    self-attention, attention on the memory, feed-forward). Each sub-layer is a residual branch with dropout
    and a LayerNorm, after the sum (post-norm) or before the sub-layer (pre-norm)."""

    def __init__(self, c: TransformerConfig, *, cross_attention: bool) -> None:
        super().__init__()
        self.norm_first = c.norm_first

        def attention(cross: bool = False) -> MultiHeadAttention:
            return MultiHeadAttention(c.d_model, c.num_heads, dropout=c.attention_dropout, fused_qkv=False,
                                      impl=c.attn_impl, cross_attention=cross)

        def norm() -> nn.LayerNorm:
            return nn.LayerNorm(c.d_model, eps=c.layer_norm_eps)

        self.self_attn, self.self_attn_layer_norm = attention(), norm()
        if cross_attention:
            self.encoder_attn, self.encoder_attn_layer_norm = attention(cross=True), norm()
        else:
            self.encoder_attn = None
        self.fc1 = nn.Linear(c.d_model, c.d_ff)  # position-wise feed-forward, eq. 2
        self.act = _ACTIVATIONS[c.activation]()
        self.act_drop = nn.Dropout(c.activation_dropout)
        self.fc2 = nn.Linear(c.d_ff, c.d_model)
        self.final_layer_norm = norm()
        self.drop = nn.Dropout(c.dropout)

    def _residual(self, x: torch.Tensor, norm: nn.LayerNorm, sublayer) -> torch.Tensor:
        if self.norm_first:
            return x + self.drop(sublayer(norm(x)))  # pre-norm
        return norm(x + self.drop(sublayer(x)))  # post-norm (sec. 3.1)

    def forward(self, x, *, self_mask=None, causal=False, memory=None, memory_mask=None, cache=None, layer=0):
        """x (B, T, D) -> (B, T, D); masks are additive (B, 1, T|1, T|S); ``cache`` an EncoderDecoderCache."""
        x = self._residual(x, self.self_attn_layer_norm, lambda h: self.self_attn(
            h, mask=self_mask, causal=causal, cache=cache.self_attn if cache is not None else None, layer=layer))
        if self.encoder_attn is not None:
            x = self._residual(x, self.encoder_attn_layer_norm, lambda h: self.encoder_attn(
                h, memory=memory, mask=memory_mask, cache=cache.cross_attn if cache is not None else None,
                layer=layer))
        return self._residual(x, self.final_layer_norm, lambda h: self.fc2(self.act_drop(self.act(self.fc1(h)))))


class TransformerStack(nn.Module):
    """Token embeddings * scale + sinusoids [-> LayerNorm] -> dropout -> layers [-> final LayerNorm]."""

    def __init__(self, c: TransformerConfig, embed_tokens: nn.Embedding, embed_positions: nn.Module,
                 num_layers: int, *, cross_attention: bool) -> None:
        super().__init__()
        self.embed_tokens, self.embed_positions = embed_tokens, embed_positions
        self.embed_scale = math.sqrt(c.d_model) if c.scale_embedding else 1.0
        self.layernorm_embedding = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps) if c.layernorm_embedding else None
        self.drop = nn.Dropout(c.dropout)
        self.layers = nn.ModuleList(TransformerLayer(c, cross_attention=cross_attention) for _ in range(num_layers))
        self.layer_norm = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps) if c.norm_first else None

    def forward(self, ids: torch.Tensor, *, start_pos: int = 0, **layer_inputs) -> torch.Tensor:
        positions = torch.arange(start_pos, start_pos + ids.size(1), device=ids.device)  # (T,)
        x = self.embed_tokens(ids) * self.embed_scale + self.embed_positions(positions)  # (B, T, D)
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        x = self.drop(x)
        for i, layer in enumerate(self.layers):
            x = layer(x, layer=i, **layer_inputs)
        return x if self.layer_norm is None else self.layer_norm(x)


# ---------------------------------------------------------------------------------------------- model


class Transformer(nn.Module):
    """Source ids (B, S) + decoder input ids (B, T) -> next-target-token logits (B, T, tgt_vocab_size).

    >>> m = Transformer(TransformerConfig(src_vocab_size=50, tgt_vocab_size=50, d_model=32, num_encoder_layers=1,
    ...                                   num_decoder_layers=1, num_heads=2, d_ff=64))
    >>> m(torch.randint(3, 50, (2, 7)), decoder_input_ids=torch.randint(3, 50, (2, 5))).shape
    torch.Size([2, 5, 50])
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = c = config
        if c.share_embeddings:
            self.shared = nn.Embedding(c.src_vocab_size, c.d_model, padding_idx=c.pad_token_id)
            src_embed = tgt_embed = self.shared
        else:
            src_embed = nn.Embedding(c.src_vocab_size, c.d_model, padding_idx=c.pad_token_id)
            tgt_embed = nn.Embedding(c.tgt_vocab_size, c.d_model, padding_idx=c.pad_token_id)
        positions = SinusoidalPositionalEncoding(c.max_position_embeddings, c.d_model)  # a buffer, not trained
        if c.positions == "halves":
            positions.table = torch.cat([positions.table[:, 0::2], positions.table[:, 1::2]], dim=1)
        self.encoder = TransformerStack(c, src_embed, positions, c.num_encoder_layers, cross_attention=False)
        self.decoder = TransformerStack(c, tgt_embed, positions, c.num_decoder_layers, cross_attention=True)
        self.lm_head = nn.Linear(c.d_model, c.tgt_vocab_size, bias=False)
        if c.final_logits_bias:
            self.register_buffer("final_logits_bias", torch.zeros(1, c.tgt_vocab_size))
        self.apply(self._init_weights)
        if c.tie_output:
            self.lm_head.weight = tgt_embed.weight

    def _init_weights(self, module: nn.Module) -> None:
        """fairseq's Transformer initialisation (Ott et al. 2019): Xavier-uniform linear layers, zero biases,
        N(0, d^-1/2) embeddings (unit variance once scaled by sqrt(d)) with a zero padding row."""
        if isinstance(module, nn.Linear):
            if module is self.lm_head:
                nn.init.normal_(module.weight, std=self.config.d_model ** -0.5)
            else:
                nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=self.config.d_model ** -0.5)
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()

    @property
    def task(self) -> str:
        return "translation"

    def new_cache(self) -> EncoderDecoderCache:
        """An empty cache for incremental decoding (one per source batch)."""
        return EncoderDecoderCache(self.config.num_decoder_layers)

    def reorder_cache(self, cache: EncoderDecoderCache, beam_idx: torch.Tensor) -> EncoderDecoderCache:
        """Keep, for each row, the decoder state of row ``beam_idx[row]`` (beam search); returns ``cache``."""
        cache.reorder(beam_idx)
        return cache

    def _check(self, ids: torch.Tensor, mask: torch.Tensor | None, name: str, fix: str, start: int = 0) -> None:
        if ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
            raise DataError(f"expected {name} of shape (batch, time), got {tuple(ids.shape)} {ids.dtype}; "
                            "tokenize the text first")
        limit = self.config.max_position_embeddings
        if start + ids.size(1) > limit:
            where = f"positions {start}..{start + ids.size(1) - 1}" if start else f"{ids.size(1)} tokens"
            raise DataError(f"{name} has {where} but the model takes at most {limit} (max_position_embeddings); "
                            f"{fix}, or build the model with max_position_embeddings>={start + ids.size(1)}")
        if mask is not None and mask.shape[0] != ids.shape[0]:
            raise DataError(f"the mask for {name} has {mask.shape[0]} rows, {name} has {ids.shape[0]}")

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Source ids (B, S), attention_mask (B, S) 1 = token 0 = padding -> memory (B, S, D)."""
        self._check(input_ids, attention_mask, "input_ids",
                    f"truncate the source (tokenize with max_length={self.config.max_position_embeddings})")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise DataError(f"attention_mask {tuple(attention_mask.shape)} must match input_ids "
                            f"{tuple(input_ids.shape)}")
        dtype = self.encoder.embed_tokens.weight.dtype
        # one (B, 1, 1, S) mask, broadcast over heads and queries: padding keys blocked
        mask = None if attention_mask is None else additive_mask(1, input_ids.size(1), key_padding=attention_mask,
                                                                 dtype=dtype)
        return self.encoder(input_ids, self_mask=mask)

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor | None = None,
        cache: EncoderDecoderCache | None = None,
        start_pos: int | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decoder input ids (B, t) attending to ``memory`` (B, S, D) -> logits (B, t, tgt_vocab_size).

        ``memory_mask`` (B, S): the source's attention_mask. With a ``cache`` (from :meth:`new_cache`), only the
        new tokens are given and their keys/values are appended; ``start_pos`` (the position of the first of
        them) defaults to the number already cached. ``decoder_attention_mask`` (B, cached + t) blocks padding
        keys in self-attention (right padding needs none: the causal mask hides it from every real token).
        """
        past = len(cache) if cache is not None else 0
        start_pos = past if start_pos is None else start_pos
        if cache is not None and start_pos != past:
            raise DataError(f"start_pos={start_pos} but the cache holds {past} positions; leave start_pos out "
                            "to continue after the cache")
        self._check(decoder_input_ids, decoder_attention_mask, "decoder_input_ids",
                    "shorten the target (or lower max_new_tokens)", start=start_pos)
        dtype = self.decoder.embed_tokens.weight.dtype
        B, t = decoder_input_ids.shape
        if decoder_attention_mask is not None and decoder_attention_mask.shape != (B, past + t):
            raise DataError(f"decoder_attention_mask must be (batch, cached + new tokens) = {(B, past + t)}, got "
                            f"{tuple(decoder_attention_mask.shape)}; pass the full running mask")
        self_mask = None if decoder_attention_mask is None else additive_mask(
            t, past + t, causal=True, key_padding=decoder_attention_mask, dtype=dtype)  # (B, 1, t, past + t)
        cross = None if memory_mask is None else additive_mask(1, memory.size(1), key_padding=memory_mask,
                                                               dtype=dtype)  # (B, 1, 1, S)
        h = self.decoder(decoder_input_ids, start_pos=start_pos, self_mask=self_mask, causal=True, memory=memory,
                         memory_mask=cross, cache=cache)  # (B, t, D)
        logits = self.lm_head(h)  # (B, t, V)
        return logits + self.final_logits_bias if self.config.final_logits_bias else logits

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Teacher forcing: input_ids (B, S) and attention_mask (B, S) of the source; decoder_input_ids (B, T),
        the target shifted right after ``decoder_start_token_id`` (see :func:`shift_right`) -> logits (B, T, V)."""
        if decoder_input_ids is None:
            raise DataError("the Transformer needs decoder_input_ids (B, T): the target shifted right, starting with "
                            f"decoder_start_token_id={self.config.decoder_start_token_id} (see shift_right); to "
                            "translate, use bigmodels.infer.seq2seq.translate")
        memory = self.encode(input_ids, attention_mask)
        return self.decode(decoder_input_ids, memory, attention_mask, decoder_attention_mask=decoder_attention_mask)


# ---------------------------------------------------------------------------------------------- registry

register_family("transformer", TransformerConfig, Transformer)

register_model(
    "transformer_base", family="transformer", task="translation", compare=False,
    config=TransformerConfig(),
    description="the paper's base model: 6+6 layers, 512 wide, 8 heads, d_ff 2048, shared 32k vocabulary (60.5M)",
)
register_model(
    "transformer_small", family="transformer", task="translation", compare=False,
    config=TransformerConfig(src_vocab_size=8000, tgt_vocab_size=8000, d_model=256, num_encoder_layers=3,
                             num_decoder_layers=3, num_heads=4, d_ff=1024),
    description="a CPU-sized Transformer for Multi30k: 3+3 layers, 256 wide, 4 heads (vocab from the data)",
)
register_model(
    "transformer_mini", family="transformer", task="translation",
    config=TransformerConfig(src_vocab_size=128, tgt_vocab_size=128, d_model=64, num_encoder_layers=2,
                             num_decoder_layers=2, num_heads=2, d_ff=128, max_position_embeddings=128),
    description="a tiny Transformer: 2+2 layers, 64 wide; compare trains it on the embedded numbers corpus",
)
