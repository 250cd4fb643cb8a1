"""Recurrent networks (Elman RNN, LSTM, GRU) for sequence classification and language modelling.

Inputs are token ids (B, T) when ``vocab_size`` is set, else float features (B, T, F); images (B, C, H, W)
are read row by row as H steps of C*W features (the classic sequential-MNIST set-up).

The ``lstm_keras`` preset is the source article's ``LSTM(50) -> Dense(10)`` classifier. Keras gives each
LSTM gate one bias where torch keeps two that are only ever summed (b_ih + b_hh); ``keras_bias=True``
drops b_hh so the model has exactly Keras' parameters: 4*50*(28+50+1) + 50*10+10 = 16,310 on 28-wide rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import check_choice, check_positive
from ..errors import ConfigError, DataError
from ..nn import sample_next_token
from ..registry import register_family, register_model

_CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


@dataclass
class RNNConfig:
    cell: str = "lstm"  # rnn | lstm | gru
    head: str = "classify"  # classify | lm
    vocab_size: int | None = None  # token inputs (required for lm)
    embed_dim: int = 64
    in_chans: int = 1  # image inputs: rows of in_chans * img_size features
    img_size: int = 8
    input_size: int = 0  # float features per step; 0 derives it from the image (in_chans * img_size)
    hidden_size: int = 128
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0  # between layers and before the head
    num_classes: int = 10
    pooling: str = "last"  # classify: last hidden state (as Keras) | mean over time
    keras_bias: bool = False  # lstm: one bias per gate, as Keras counts parameters
    tie_weights: bool = False  # lm: the output layer reuses the embedding (needs embed_dim == hidden_size)

    def __post_init__(self) -> None:
        check_choice("rnn", "cell", self.cell, tuple(_CELLS))
        check_choice("rnn", "head", self.head, ("classify", "lm"))
        check_choice("rnn", "pooling", self.pooling, ("last", "mean"))
        for key in ("hidden_size", "num_layers", "embed_dim", "vocab_size", "in_chans", "img_size"):
            check_positive("rnn", key, getattr(self, key))
        check_positive("rnn", "num_classes", self.num_classes, allow_zero=True)  # 0: no classifier
        if self.head == "lm" and (self.vocab_size is None or self.bidirectional):
            raise ConfigError("rnn: a language model needs vocab_size and bidirectional=false")
        if self.keras_bias and self.cell != "lstm":
            raise ConfigError("rnn.keras_bias applies to cell=lstm only")
        if self.tie_weights and (self.head != "lm" or self.embed_dim != self.hidden_size):
            raise ConfigError("rnn.tie_weights needs head=lm and embed_dim == hidden_size")

    @property
    def step_features(self) -> int:
        if self.vocab_size is not None:
            return self.embed_dim
        return self.input_size or self.in_chans * self.img_size


def _drop_hidden_bias(rnn: nn.LSTM) -> None:
    """Keep one bias per gate: b_hh becomes a non-trainable zero buffer the fused kernel still reads."""
    for name in [n for n in rnn._flat_weights_names if n.startswith("bias_hh")]:
        zeros = torch.zeros_like(getattr(rnn, name).data)
        delattr(rnn, name)
        rnn.register_buffer(name, zeros, persistent=False)
    rnn._init_flat_weights()


class RNNModel(nn.Module):
    """Embedding or feature input -> stacked RNN/LSTM/GRU -> classifier or next-token head.

    >>> m = RNNModel(RNNConfig(cell="gru", head="lm", vocab_size=65))
    >>> m(torch.zeros(2, 16, dtype=torch.long)).shape
    torch.Size([2, 16, 65])
    """

    def __init__(self, config: RNNConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.embed_dim) if c.vocab_size is not None else None
        self.rnn = _CELLS[c.cell](
            c.step_features, c.hidden_size, num_layers=c.num_layers, batch_first=True,
            bidirectional=c.bidirectional, dropout=c.dropout if c.num_layers > 1 else 0.0,
        )
        if c.keras_bias:
            _drop_hidden_bias(self.rnn)
        self.drop = nn.Dropout(c.dropout)
        self.num_features = c.hidden_size * (2 if c.bidirectional else 1)
        out = c.vocab_size if c.head == "lm" else c.num_classes
        self.fc = nn.Linear(self.num_features, out) if out > 0 else nn.Identity()
        if c.tie_weights:
            self.fc.weight = self.embed.weight

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        if self.embed is not None:
            if x.dtype not in (torch.int64, torch.int32) or x.dim() != 2:
                raise DataError(f"expected token ids of shape (batch, time), got {tuple(x.shape)} {x.dtype}")
            return self.embed(x)  # (B, T, E)
        if x.dim() == 4:  # images: (B, C, H, W) -> H steps of C*W features
            x = x.permute(0, 2, 1, 3).flatten(2)
        if x.dim() != 3 or x.shape[-1] != c.step_features:
            raise DataError(
                f"expected sequences of shape (batch, time, {c.step_features}), got {tuple(x.shape)}; "
                f"build the model with input_size={x.shape[-1]} (or matching in_chans/img_size)"
            )
        return x

    def forward_with_state(self, x: torch.Tensor, state=None):
        """Run the recurrence; returns (outputs (B, T, H*dirs), final state)."""
        return self.rnn(self._inputs(x), state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, state = self.forward_with_state(x)
        if self.config.head == "lm":
            return self.fc(self.drop(out))  # (B, T, V)
        if self.config.pooling == "mean":
            feats = out.mean(1)
        else:  # final hidden state of the top layer; both directions when bidirectional
            h = state[0] if isinstance(state, tuple) else state  # (layers*dirs, B, H)
            dirs = 2 if self.config.bidirectional else 1
            feats = h[-dirs:].transpose(0, 1).flatten(1)  # (B, H*dirs)
        return self.fc(self.drop(feats))  # (B, num_classes)

    def reset_classifier(self, num_classes: int) -> None:
        if self.config.head != "classify":
            raise ConfigError("reset_classifier applies to classifiers; this is a language model")
        self.config.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    @torch.no_grad()
    def generate(
        self,
        ids: torch.Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Continue ``ids`` (B, T) by ``max_new_tokens`` sampled tokens; temperature 0 is greedy."""
        if self.config.head != "lm":
            raise ConfigError("generate needs a language model (head=lm)")
        if ids.numel() == 0:
            raise DataError("the prompt is empty; give at least one token to start from")
        out, state = self.forward_with_state(ids)
        tokens = [ids]
        for _ in range(max_new_tokens):
            logits = self.fc(out[:, -1])  # (B, V)
            nxt = sample_next_token(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
            tokens.append(nxt)
            out, state = self.forward_with_state(nxt, state)
        return torch.cat(tokens, dim=1)


register_family("rnn", RNNConfig, RNNModel)

_CLASSIFY = "image_classification"  # image rows as sequences; token classifiers use sequence_classification
for _cell in _CELLS:
    register_model(
        f"{_cell}_classifier", family="rnn", task=_CLASSIFY, config=RNNConfig(cell=_cell, hidden_size=128),
        description=f"one-layer {_cell.upper()} over image rows, last hidden state -> classes",
    )
    register_model(
        f"char_{_cell}", family="rnn", task="language_modeling",
        config=RNNConfig(cell=_cell, head="lm", vocab_size=128, embed_dim=128, hidden_size=256, num_layers=2,
                         dropout=0.1),
        description=f"two-layer character-level {_cell.upper()} language model",
    )
register_model(
    "lstm_keras", family="rnn", task=_CLASSIFY,
    config=RNNConfig(cell="lstm", img_size=28, hidden_size=50, keras_bias=True),
    description="the source article's Keras LSTM(50) -> Dense(10), on 28-wide rows (16,310 params)",
)
