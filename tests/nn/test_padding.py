"""Unpadded and has_padding: the real-token rows of a padded batch, and the no-padding shortcut."""

from __future__ import annotations

import torch

from bigmodels.nn.padding import Unpadded, has_padding


def test_has_padding_reads_the_mask():
    assert has_padding(None) is False
    assert has_padding(torch.ones(3, 5, dtype=torch.long)) is False
    assert has_padding(torch.tensor([[1, 1, 1], [1, 1, 0]])) is True
    assert has_padding(torch.tensor([[True, False]])) is True


def test_unpadded_round_trip_and_none_without_padding():
    assert Unpadded.from_mask(torch.ones(2, 4)) is None
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])
    u = Unpadded.from_mask(mask)
    assert u.tokens == 5 and u.index.tolist() == [0, 1, 4, 5, 6]
    x = torch.randn(2, 4, 3)
    back = u.pad(u.unpad(x))
    assert torch.equal(back[mask.bool()], x[mask.bool()]) and not back[~mask.bool()].any()
