"""Padding removal: run the position-wise layers of an encoder on the real tokens only.

A padded batch (B, T) of sentences of different lengths spends the matrix products of every position-wise
layer (projections, feed-forward, LayerNorm) on padding too. :class:`Unpadded` records where the real
tokens sit so those layers can run on the (N, C) rows of real tokens, N = number of ones in the mask, and
only attention, which mixes positions, sees the padded (B, T) layout (the idea behind FasterTransformer's
"remove padding" and PyTorch's nested-tensor encoder fast path). The arithmetic per real token is the
same, so the results match the padded computation to float rounding.

    >>> mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    >>> u = Unpadded.from_mask(mask)
    >>> x = torch.arange(6.).view(2, 3, 1)
    >>> u.unpad(x).flatten().tolist()
    [0.0, 1.0, 2.0, 3.0]
    >>> u.pad(u.unpad(x)).flatten().tolist()  # padding positions come back as zeros
    [0.0, 1.0, 2.0, 3.0, 0.0, 0.0]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Unpadded", "has_padding"]


def has_padding(attention_mask: torch.Tensor | None) -> bool:
    """Whether a (B, T) mask (1 = token, 0 = padding) blocks any position. True while ``torch.export`` traces (a
    graph for any batch cannot branch on the mask's values, so it keeps the mask); reads the values otherwise (on
    a GPU, a synchronisation).

    >>> has_padding(torch.ones(2, 4)), has_padding(torch.tensor([[1, 1, 0]])), has_padding(None)
    (False, True, False)
    """
    if attention_mask is None:
        return False
    if torch.compiler.is_exporting():
        return True
    return not bool(attention_mask.bool().all())


@dataclass(frozen=True)
class Unpadded:
    """The real-token rows of a (B, T) batch: ``index`` (N,) holds their flat positions b * T + t."""

    index: torch.Tensor
    batch: int
    length: int

    @classmethod
    def from_mask(cls, attention_mask: torch.Tensor) -> Unpadded | None:
        """From a (B, T) mask, 1 = token, 0 = padding; None when there is no padding (nothing to gain), and while
        ``torch.export`` traces the model (ONNX export): a graph for any batch cannot branch on the mask's values,
        so it keeps the padded layout, the same layers and the same results to float rounding."""
        if torch.compiler.is_exporting() or not has_padding(attention_mask):
            return None
        B, T = attention_mask.shape
        return cls(attention_mask.bool().flatten().nonzero().squeeze(1), B, T)  # (N,)

    @property
    def tokens(self) -> int:
        return self.index.numel()

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) -> (N, ...): the real tokens' rows, in batch-then-time order."""
        return x.flatten(0, 1).index_select(0, self.index)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """(N, ...) -> (B, T, ...), zeros at padding positions (differentiable)."""
        out = x.new_zeros(self.batch * self.length, *x.shape[1:])  # fresh, so filling it in place is safe for autograd
        return out.index_copy_(0, self.index, x).view(self.batch, self.length, *x.shape[1:])
