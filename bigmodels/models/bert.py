"""BERT (Devlin et al. 2019, arXiv:1810.04805): a post-LN Transformer encoder with one task head on top.

    tokens + segments + positions -> LayerNorm -> L x [x = LN(x + Attn(x)); x = LN(x + W2 act(W1 x))]

``BertConfig.head`` picks what sits on the encoder and what ``forward`` returns:

==========================  ==============================================================  ========================
head                        forward(...) returns                                            task
==========================  ==============================================================  ========================
encoder                     hidden states (B, T, H)  (``encode_ids`` adds the pooled CLS)   sentence_embedding
embedding                   a sentence vector (B, H): mean over real tokens or CLS,         sentence_embedding
                            L2-normalised when ``normalize`` (Sentence-BERT, Reimers &
                            Gurevych 2019)
pretraining                 (masked-LM logits (B, T, V), next-sentence logits (B, 2))       masked_language_modeling
mlm                         masked-LM logits (B, T, V)                                      masked_language_modeling
sequence_classification     (B, num_labels) from the pooler (tanh dense on CLS), or from    sequence_classification
                            the mean over real tokens with classifier_pooling="mean" (the
                            better start for sentence-embedding checkpoints)
token_classification        (B, T, num_labels)                                              token_classification
question_answering          (B, T, 2): start and end logits of the answer span              question_answering
==========================  ==============================================================  ========================

Parameter names are our own (``layers.3.attn.q_proj``); ``interop/hf_bert.py`` maps them to and from
Hugging Face checkpoints, so ``bigmodels.load("path/to/bert")`` reads them directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check_choice, check_positive
from ..errors import ConfigError, DataError
from ..nn import LearnedPositionalEmbedding, MultiHeadAttention
from ..nn.attention import ATTENTION_IMPLS
from ..nn.attention import attention_mask as additive_mask
from ..nn.padding import Unpadded, has_padding
from ..registry import register_family, register_model

__all__ = ["BertConfig", "Bert", "HEADS"]

HEADS = ("encoder", "embedding", "pretraining", "mlm", "sequence_classification", "token_classification",
         "question_answering")
_TASK_OF_HEAD = {"encoder": "sentence_embedding", "embedding": "sentence_embedding",
                 "pretraining": "masked_language_modeling", "mlm": "masked_language_modeling"}
_CLASSIFIER_HEADS = ("sequence_classification", "token_classification")
_ACTIVATIONS = {  # Hugging Face hidden_act names; "gelu" is the exact erf form (BERT's)
    "gelu": lambda: nn.GELU(),
    "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
}


@dataclass
class BertConfig:
    """BERT hyper-parameters under their Hugging Face names, plus the head and its options."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    hidden_act: str = "gelu"
    pad_token_id: int = 0
    initializer_range: float = 0.02  # std of the normal initialisation
    attn_impl: str = "sdpa"  # sdpa | reference
    head: str = "encoder"  # see the module docstring
    num_labels: int = 2  # sequence_ / token_classification (question_answering: always 2)
    classifier_dropout: float | None = None  # None: hidden_dropout_prob
    pooling: str = "mean"  # embedding head: mean (over real tokens) | cls
    classifier_pooling: str = "pooler"  # sequence_classification reads: pooler (transformers') | mean (real tokens)
    normalize: bool = False  # embedding head: L2-normalise the sentence vector
    add_pooling_layer: bool | None = None  # None: as transformers builds it (BertModel, the
    # pretraining and classification heads that read it); the others have none unless add_pooling_layer=True

    def __post_init__(self) -> None:
        check_choice("bert", "head", self.head, HEADS)
        check_choice("bert", "attn_impl", self.attn_impl, ATTENTION_IMPLS)
        check_choice("bert", "hidden_act", self.hidden_act, tuple(_ACTIVATIONS))
        check_choice("bert", "pooling", self.pooling, ("mean", "cls"))
        check_choice("bert", "classifier_pooling", self.classifier_pooling, ("pooler", "mean"))
        for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                    "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "initializer_range", "num_labels"):
            check_positive("bert", key, getattr(self, key))
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"bert.hidden_size={self.hidden_size} must be divisible by "
                              f"bert.num_attention_heads={self.num_attention_heads}")
        for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
            p = getattr(self, key)
            if p is not None and not 0.0 <= p < 1.0:
                raise ConfigError(f"bert.{key}={p!r} must be in [0, 1)")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(f"bert.pad_token_id={self.pad_token_id} must be a token id below "
                              f"vocab_size={self.vocab_size}")
        if self.head == "question_answering" and self.num_labels != 2:
            raise ConfigError(f"bert.num_labels={self.num_labels}: question answering predicts a start and an end "
                              "logit per token; use num_labels=2")
        if self.add_pooling_layer is False and self.reads_pooler:
            raise ConfigError(f"bert.head={self.head!r} reads the pooled CLS vector; drop add_pooling_layer=false")

    @property
    def task(self) -> str:
        """The registry task the head solves."""
        return _TASK_OF_HEAD.get(self.head, self.head)

    @property
    def reads_pooler(self) -> bool:
        """Whether the head's output depends on the pooler (next sentence; the default classifier)."""
        return self.head == "pretraining" or (self.head == "sequence_classification"
                                               and self.classifier_pooling == "pooler")

    @property
    def has_pooler(self) -> bool:
        if self.add_pooling_layer is not None:
            return self.add_pooling_layer
        return self.reads_pooler or self.head == "encoder"


# ---------------------------------------------------------------------------------------------- blocks


class BertEmbeddings(nn.Module):
    """Token + segment + learned position embeddings, then LayerNorm and dropout (BERT sec. 3, fig. 2)."""

    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.position_embeddings = LearnedPositionalEmbedding(c.max_position_embeddings, c.hidden_size)
        self.norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.drop = nn.Dropout(c.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)  # (B, T, H)
        x = x + self.position_embeddings(positions)  # summed in Hugging Face's order: same float rounding
        return self.drop(self.norm(x))


class BertLayer(nn.Module):
    """Post-LN encoder block (Vaswani et al. 2017): residual, then LayerNorm, after attention and the MLP."""

    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(c.hidden_size, c.num_attention_heads, dropout=c.attention_probs_dropout_prob,
                                       fused_qkv=False, impl=c.attn_impl)
        self.attn_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.fc1 = nn.Linear(c.hidden_size, c.intermediate_size)
        self.act = _ACTIVATIONS[c.hidden_act]()
        self.fc2 = nn.Linear(c.intermediate_size, c.hidden_size)
        self.mlp_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.drop = nn.Dropout(c.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, unpadded: Unpadded | None = None) -> torch.Tensor:
        """x (B, T, H), or (N, H) real tokens only when ``unpadded`` says where they sit in the batch."""
        x = self.attn_norm(x + self.drop(self.attn(x, mask=mask, unpadded=unpadded)))  # (B, T, H) | (N, H)
        return self.mlp_norm(x + self.drop(self.fc2(self.act(self.fc1(x)))))


class BertPooler(nn.Module):
    """tanh(W h_CLS + b): the sentence vector BERT's next-sentence and classification heads read."""

    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))  # (B, H)


class BertLMHead(nn.Module):
    """Masked-LM head: dense -> act -> LayerNorm -> decoder tied to the word embeddings (+ its own bias)."""

    def __init__(self, c: BertConfig, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)
        self.act = _ACTIVATIONS[c.hidden_act]()
        self.norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.decoder = nn.Linear(c.hidden_size, c.vocab_size)
        self.decoder.weight = word_embeddings.weight  # tied, as in BERT (and Press & Wolf 2017)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(self.act(self.dense(hidden))))  # (B, T, V)


# ---------------------------------------------------------------------------------------------- model


class Bert(nn.Module):
    """BERT encoder + the head named by ``config.head``.

    >>> m = Bert(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    ...                     vocab_size=100, head="sequence_classification", num_labels=3)).eval()
    >>> ids = torch.randint(1, 100, (2, 8))
    >>> m(ids, attention_mask=torch.ones(2, 8, dtype=torch.long)).shape
    torch.Size([2, 3])
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = c = config
        self.embeddings = BertEmbeddings(c)
        self.layers = nn.ModuleList(BertLayer(c) for _ in range(c.num_hidden_layers))
        self.pooler = BertPooler(c) if c.has_pooler else None
        self._build_head()
        self.apply(self._init_weights)

    def _build_head(self) -> None:
        c = self.config
        if c.head in ("pretraining", "mlm"):
            self.lm_head = BertLMHead(c, self.embeddings.word_embeddings)
        if c.head == "pretraining":
            self.nsp = nn.Linear(c.hidden_size, 2)  # IsNext / NotNext
        if c.head in _CLASSIFIER_HEADS:
            p = c.hidden_dropout_prob if c.classifier_dropout is None else c.classifier_dropout
            self.head_drop = nn.Dropout(p)
            self.classifier = nn.Linear(c.hidden_size, c.num_labels)
        if c.head == "question_answering":
            self.qa_outputs = nn.Linear(c.hidden_size, 2)

    def _init_weights(self, module: nn.Module) -> None:
        """N(0, initializer_range) weights, zero biases, unit LayerNorm; the padding row zero (as BERT)."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    @property
    def task(self) -> str:
        """The registry task the head solves (decided by ``config.head``)."""
        return self.config.task

    def _hidden(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        positions: torch.Tensor | None,
        *,
        unpad: bool = False,
    ) -> torch.Tensor:
        """Last hidden states (B, T, H). With ``unpad`` (heads that read real tokens only), the position-wise
        layers skip padding (see :class:`~bigmodels.nn.padding.Unpadded`) and padding positions come back 0."""
        c = self.config
        if not isinstance(input_ids, torch.Tensor):  # texts where token ids belong (sentence-transformers' habit)
            raise DataError(f"BERT takes token ids (a (batch, time) tensor), got a {type(input_ids).__name__}; "
                            "tokenize the text first, or for sentence vectors of texts use "
                            "bigmodels.infer.embed.embed_texts(model, tokenizer, texts)")
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
            raise DataError(f"expected token ids of shape (batch, time), got {tuple(input_ids.shape)} "
                            f"{input_ids.dtype}; tokenize the text first")
        B, T = input_ids.shape
        if T > c.max_position_embeddings:
            raise DataError(f"the input has {T} tokens but this BERT takes at most {c.max_position_embeddings} "
                            f"(max_position_embeddings); truncate it (tokenize with max_length="
                            f"{c.max_position_embeddings})")
        for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids),
                        ("positions", positions)):
            if t is not None and t.shape != input_ids.shape and not (name == "positions" and t.shape == (1, T)):
                raise DataError(f"{name} has shape {tuple(t.shape)}; it must match input_ids {(B, T)}")
        if positions is None:
            positions = torch.arange(T, device=input_ids.device)[None]  # (1, T)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        # a batch without padding needs neither the real-token gather nor a mask: an all-zero additive mask only
        # costs the attention kernel a read and an add per score (the check syncs, so only where unpad does anyway)
        padded = attention_mask is not None and (not unpad or has_padding(attention_mask))
        u = Unpadded.from_mask(attention_mask) if unpad and padded else None
        if u is None:
            x = self.embeddings(input_ids, token_type_ids, positions)  # (B, T, H)
        else:  # the real tokens only: (N,) ids -> (N, H)
            x = self.embeddings(u.unpad(input_ids), u.unpad(token_type_ids), u.unpad(positions.expand(B, T)))
        # one additive mask (B, 1, T, T) for every layer: padding keys blocked, all queries kept
        mask = additive_mask(T, T, key_padding=attention_mask, dtype=x.dtype) if padded else None
        for layer in self.layers:
            x = layer(x, mask, u)
        return x if u is None else u.pad(x)  # (B, T, H)

    def encode_ids(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(last hidden states (B, T, H), pooled CLS (B, H) or None when the model has no pooler), any head.

        Token ids in, not texts: named so that it is not taken for sentence-transformers' ``encode(texts)``
        (sentence vectors of texts: ``bigmodels.infer.embed.embed_texts(model, tokenizer, texts)``).
        """
        hidden = self._hidden(input_ids, attention_mask, token_type_ids, positions)
        return hidden, self.pooler(hidden) if self.pooler is not None else None

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """input_ids (B, T); attention_mask (B, T), 1 = token, 0 = padding; token_type_ids (B, T) segment ids
        (0 = first sentence); positions (B, T) or (1, T), default 0..T-1. Returns what the head gives (see above).
        """
        head = self.config.head
        # sentence-level heads read real tokens only (mean, [CLS]), so padding can skip the encoder's work
        h = self._hidden(input_ids, attention_mask, token_type_ids, positions,
                         unpad=head in ("embedding", "sequence_classification"))  # (B, T, H)
        if head == "encoder":
            return h
        if head == "embedding":
            v = self._pool(h, attention_mask, self.config.pooling)
            return F.normalize(v, p=2, dim=-1) if self.config.normalize else v
        if head == "mlm":
            return self.lm_head(h)
        if head == "pretraining":
            return self.lm_head(h), self.nsp(self.pooler(h))  # (B, T, V), (B, 2)
        if head == "sequence_classification":
            pooled = self.pooler(h) if self.config.classifier_pooling == "pooler" else self._pool(h, attention_mask)
            return self.classifier(self.head_drop(pooled))  # (B, num_labels)
        if head == "token_classification":
            return self.classifier(self.head_drop(h))  # (B, T, num_labels)
        return self.qa_outputs(h)  # (B, T, 2): [..., 0] start, [..., 1] end

    @staticmethod
    def _pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, mode: str = "mean") -> torch.Tensor:
        """(B, T, H) -> (B, H): the [CLS] state, or the mean over real tokens (sentence-transformers' mean)."""
        if mode == "cls":
            return hidden[:, 0]
        if attention_mask is None:
            return hidden.mean(1)
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)

    def reset_classifier(self, num_labels: int) -> None:
        """Put a fresh ``num_labels``-way classifier on the encoder (the fine-tuning step).

        A token classifier stays a token classifier; any other head becomes ``sequence_classification``
        (its old head is dropped; a pooler is added when the model had none and the classifier reads it).
        """
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
            raise ConfigError(f"reset_classifier({num_labels!r}): give the number of labels, a whole number >= 1")
        c = self.config
        for name in ("lm_head", "nsp", "head_drop", "classifier", "qa_outputs"):
            if hasattr(self, name):
                delattr(self, name)
        if c.head != "token_classification":
            c.head = "sequence_classification"
            if self.pooler is None and c.classifier_pooling == "pooler":
                c.add_pooling_layer = None
                self.pooler = BertPooler(c)
                self.pooler.apply(self._init_weights)
        c.num_labels = num_labels
        self._build_head()
        self.classifier.apply(self._init_weights)


# ---------------------------------------------------------------------------------------------- registry

register_family("bert", BertConfig, Bert)

register_model(
    "bert-base", family="bert", task="masked_language_modeling", config=BertConfig(head="pretraining"),
    description="BERT-base (Devlin et al. 2019): 12 layers, 768 wide, 12 heads; masked LM + next sentence, 110M",
    compare=False,
)
register_model(
    "bert-large", family="bert", task="masked_language_modeling",
    config=BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                      head="pretraining"),
    description="BERT-large: 24 layers, 1024 wide, 16 heads; masked LM + next sentence, 336M",
    compare=False,
)
register_model(
    "minilm-l6-h384", family="bert", task="sentence_embedding",
    config=BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
                      head="embedding", pooling="mean", normalize=True),
    description="all-MiniLM-L6-v2's architecture: 6 layers, 384 wide; mean-pooled, normalised sentence vectors",
    compare=False,
)

register_model(
    "bert_mini", family="bert", task="masked_language_modeling",
    config=BertConfig(vocab_size=128, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                      intermediate_size=512, max_position_embeddings=128, head="pretraining"),
    description="a small BERT for CPU experiments: 4 layers, 128 wide; masked LM + next sentence",
)
