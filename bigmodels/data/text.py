"""Text corpora and fixed-length windows for language modelling (the tokenizers live in
:mod:`bigmodels.data.tokenizers`)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from bigmodels.errors import ConfigError, DataError

__all__ = ["TokenWindows", "pydoc_corpus", "read_text", "split_text"]


def pydoc_corpus() -> str:
    """The Python docs topics that ship with every CPython (`pydoc_data`): ~465k characters, offline.

    >>> len(pydoc_corpus()) > 100_000
    True
    """
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def read_text(path: str | Path) -> str:
    """The UTF-8 text of `path`.

    >>> text = read_text("../shared/data/tinyshakespeare/input.txt")
    """
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"text file {path} does not exist; check the path") from None
    except UnicodeDecodeError as exc:
        raise DataError(
            f"text file {path} is not valid UTF-8 ({exc.reason} at byte {exc.start}); re-encode it as UTF-8"
        ) from exc
    except OSError as exc:
        raise DataError(f"cannot read text file {path}: {exc}") from exc


def split_text(text: str, val_fraction: float = 0.1) -> tuple[str, str]:
    """(first 1 - f, last f) of `text`, the nanoGPT convention.

    >>> split_text("abcdefghij", 0.2)
    ('abcdefgh', 'ij')
    """
    if not 0.0 < val_fraction < 1.0:  # 0 would leave an empty validation text (see split_dataset)
        raise ConfigError(f"val_fraction={val_fraction!r} must be in (0, 1), e.g. 0.1: it is the share of the text "
                          "kept to validate on, and the validation split cannot be empty")
    cut = int(len(text) * (1.0 - val_fraction))
    return text[:cut], text[cut:]


class TokenWindows(Dataset):
    """Non-overlapping language-modelling windows: item i = (ids[i*T : i*T+T], ids[i*T+1 : i*T+T+1]).

    >>> ds = TokenWindows(torch.arange(10), block_size=3)
    >>> len(ds), ds[1]
    (3, (tensor([3, 4, 5]), tensor([4, 5, 6])))
    """

    def __init__(self, ids: Tensor, block_size: int) -> None:
        if ids.ndim != 1 or ids.is_floating_point() or ids.is_complex():
            raise DataError(
                f"TokenWindows needs a 1-D integer tensor of ids, got {ids.dtype} {tuple(ids.shape)}"
            )
        if not isinstance(block_size, int) or block_size < 1:
            raise ConfigError(f"block_size={block_size!r} must be a positive int")
        if len(ids) < block_size + 1:
            raise DataError(
                f"the text has {len(ids)} tokens but block_size={block_size} needs at least "
                f"{block_size + 1}; lower block_size or use a longer text"
            )
        self.ids = ids.to(torch.int64)  # (N,)
        self.block_size = block_size

    def __len__(self) -> int:
        return (len(self.ids) - 1) // self.block_size

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} windows")
        start = (index % len(self)) * self.block_size
        chunk = self.ids[start : start + self.block_size + 1].clone()  # (T + 1,)
        return chunk[:-1], chunk[1:]

    def get_batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """(x (B, T), y (B, T)) int64 for a LongTensor of window indices."""
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= len(self)):
            raise IndexError(f"window indices must lie in 0..{len(self) - 1}")
        offsets = torch.arange(self.block_size + 1)  # (T + 1,)
        chunk = self.ids[indices[:, None] * self.block_size + offsets]  # (B, T + 1)
        return chunk[:, :-1], chunk[:, 1:]
