"""Positional encodings: sinusoidal (Vaswani et al. 2017, sec. 3.5), learned, and rotary (Su et al. 2021)."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["sinusoidal_table", "SinusoidalPositionalEncoding", "LearnedPositionalEmbedding", "RotaryEmbedding"]


def sinusoidal_table(num_positions: int, dim: int) -> torch.Tensor:
    """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(pos / 10000^(2i/d)); (num_positions, dim)."""
    pos = torch.arange(num_positions, dtype=torch.float64)[:, None]
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    table = torch.zeros(num_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * inv_freq)
    table[:, 1::2] = torch.cos(pos * inv_freq)[:, : dim // 2]
    return table.float()


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed sinusoidal encodings, looked up by position: positions (B, T) or (T,) -> (..., dim)."""

    def __init__(self, max_positions: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("table", sinusoidal_table(max_positions, dim), persistent=False)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return self.table[positions]


class LearnedPositionalEmbedding(nn.Embedding):
    """A trained table of position vectors (GPT-2, BERT): positions -> (..., dim)."""


class RotaryEmbedding(nn.Module):
    """Rotary position embedding: rotates each (even, odd) pair of a head's channels by pos * theta_i.

    Applied to queries and keys, it makes q.k depend on relative position only.
    ``forward(x, positions)`` with x (B, nh, T, hs) and positions (B, T) or None (0..T-1).
    """

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        T = x.size(-2)
        if positions is None:
            positions = torch.arange(T, device=x.device)[None]  # (1, T)
        angles = positions[:, None, :, None].float() * self.inv_freq  # (B, 1, T, hs/2)
        cos, sin = angles.cos(), angles.sin()
        x1, x2 = x.float()[..., 0::2], x.float()[..., 1::2]
        rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
        return rotated.to(x.dtype)
