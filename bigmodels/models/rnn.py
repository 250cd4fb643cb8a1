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


@dataclass
class RecurrentCache:
    """A recurrent model's decoding state (what :meth:`RNNModel.new_cache` gives): the hidden state (and an LSTM's
    cell state) after the ``length`` tokens seen so far; ``model(ids, cache=c)`` starts there and leaves the new one.
    """

    state: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None
    length: int = 0

    def __len__(self) -> int:
        return self.length


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

    def _recur(self, x: torch.Tensor, cache: RecurrentCache | None):
        """forward_with_state from ``cache``'s state (when given), which then holds the state after ``x``."""
        out, state = self.forward_with_state(x, None if cache is None else cache.state)
        if cache is not None:
            cache.state, cache.length = state, cache.length + out.shape[1]
        return out, state

    def _pool(self, out: torch.Tensor, state) -> torch.Tensor:
        """(B, T, H*dirs) outputs and the final state -> the features (B, H*dirs) a classifier reads."""
        if self.config.pooling == "mean":
            return out.mean(1)
        # final hidden state of the top layer; both directions when bidirectional
        h = state[0] if isinstance(state, tuple) else state  # (layers*dirs, B, H)
        dirs = 2 if self.config.bidirectional else 1
        return h[-dirs:].transpose(0, 1).flatten(1)  # (B, H*dirs)

    def forward(self, x: torch.Tensor, *, cache: RecurrentCache | None = None) -> torch.Tensor:
        """Next-token logits (B, T, V) (head=lm) or class logits (B, num_classes); with a ``cache`` (from
        :meth:`new_cache`) the recurrence continues from the tokens before ``x``."""
        out, state = self._recur(x, cache)
        if self.config.head == "lm":
            return self.fc(self.drop(out))  # (B, T, V)
        return self.forward_head(self._pool(out, state))  # (B, num_classes)

    # the contract's vision methods (images read row by row) and decoder methods (token ids)
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled features (B, H*dirs) the classifier reads."""
        return self._pool(*self.forward_with_state(x))

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(feats))

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """One stage: the top layer's outputs at every step, [(B, T, H*dirs)]."""
        return [self.forward_with_state(x)[0]]

    def forward_hidden(self, x: torch.Tensor, *, cache: RecurrentCache | None = None) -> torch.Tensor:
        """The top layer's outputs (B, T, H*dirs), what the output layer reads; ``cache`` as in :meth:`forward`."""
        return self._recur(x, cache)[0]

    def new_cache(self) -> RecurrentCache:
        """An empty decoding state: ``model(ids[:, :k], cache=c)`` then ``model(ids[:, k:], cache=c)`` gives the
        logits of ``model(ids)``."""
        return RecurrentCache()

    def reset_classifier(self, num_classes: int) -> None:
        if self.config.head != "classify":
            raise ConfigError("reset_classifier applies to classifiers; this is a language model")
        self.config.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


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
