"""Character-level text data: the char tokenizer's list-of-ids view, corpora, and fixed-length windows for
language modelling."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset

from bigmodels.data.tokenizers import Tokenizer
from bigmodels.errors import ConfigError, DataError

__all__ = ["CharTokenizer", "TokenWindows", "pydoc_corpus", "read_text", "split_text"]

Unknown = Literal["error", "replace", "skip"]


class CharTokenizer:
    """One id per character: the list-of-ids view of a character-level `Tokenizer` (`Tokenizer.train_chars`,
    on the `tokenizers` library), which char language models, `bigmodels.save` and `predict` use.

    There is one char tokenizer: `.tokenizer` is the full `Tokenizer` (batches, padding, ...), `save` writes
    its Hugging Face tokenizer.json, and `load` reads that or the legacy ``{"type": "char"}`` JSON.
    `encode` handles characters outside the vocabulary by `unknown`: "error" (default) raises `DataError`
    naming them; "replace" maps each to the `unk` character (fit with `unk="?"`); "skip" drops them.

    >>> tok = CharTokenizer.fit("hello world")
    >>> tok.decode(tok.encode("hello"))
    'hello'
    >>> tok.encode("hi!", unknown="skip") == tok.encode("h")
    True
    """

    def __init__(self, vocab: Iterable[str], unk: str | None = None) -> None:
        self._wrap(Tokenizer.from_chars(list(vocab), unk_token=unk))

    def _wrap(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.vocab: list[str] = [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)]
        self.unk: str | None = tokenizer.special_tokens.get("unk")
        self._stoi = {c: i for i, c in enumerate(self.vocab) if len(c) == 1}
        self._multi = [t for t in self.vocab if len(t) > 1]  # special tokens the library matches in text

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer) -> CharTokenizer:
        """The list-of-ids view of a char-level `Tokenizer`."""
        if tokenizer.kind != "char":
            raise DataError(f"a {tokenizer.kind} tokenizer is not character level; use it as a Tokenizer "
                            "(bigmodels.data.load_tokenizer) or build one with Tokenizer.train_chars")
        self = cls.__new__(cls)
        self._wrap(tokenizer)
        return self

    @classmethod
    def fit(cls, text: str, unk: str | None = None) -> CharTokenizer:
        """Vocabulary = sorted distinct characters of `text` (plus `unk`, a single character, if given)."""
        if unk is not None and len(unk) != 1:
            raise ConfigError(f"unk={unk!r} must be a single character, e.g. '?'")
        return cls.from_tokenizer(Tokenizer.train_chars(text, unk_token=unk))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, unknown: Unknown = "error") -> list[int]:
        """Ids for each character of `text`; see the class docstring for `unknown`."""
        if unknown not in ("error", "replace", "skip"):
            raise ConfigError(f"unknown={unknown!r} is not one of 'error', 'replace', 'skip'")
        if unknown == "replace" and self.unk is None:
            raise ConfigError(
                "unknown='replace' needs a tokenizer with an unk character; fit it with "
                "CharTokenizer.fit(text, unk='?') or use unknown='skip'"
            )
        stoi = self._stoi
        missing = set(text) - stoi.keys()
        if missing and unknown == "error":
            shown = ", ".join(repr(c) for c in sorted(missing)[:10]) + (", ..." if len(missing) > 10 else "")
            raise DataError(
                f"text has {len(missing)} distinct characters ({sum(c in missing for c in text)} in all) outside "
                f"the tokenizer's vocabulary of {self.vocab_size}: {shown}; pass unknown='replace' (with an unk "
                "character) or unknown='skip', or retrain the tokenizer on text that contains them"
            )
        if missing and unknown == "skip":
            text = "".join(c for c in text if c in stoi)
        if any(t in text for t in self._multi):  # literal special tokens: the library's matching decides
            return self.tokenizer.encode(text, add_special_tokens=False, truncation=False).ids
        if missing:  # replace
            unk_id = self.tokenizer.unk_id
            return [stoi.get(c, unk_id) for c in text]
        # A dict lookup gives the library's ids exactly (no normaliser, one token per character) and is
        # ~35x faster on a whole corpus (1.1M characters: 0.03 s against 1.2 s).
        return [stoi[c] for c in text]

    def decode(self, ids: Iterable[int] | Tensor, skip_special_tokens: bool = False) -> str:
        """The text for `ids` (a list or a 1-D tensor): every id's token, special ones included by default."""
        return self.tokenizer.decode(ids if isinstance(ids, Tensor) else list(ids), skip_special_tokens)

    def save(self, path: str | Path) -> Path:
        """Write the Hugging Face tokenizer.json of `.tokenizer` (see `Tokenizer.save`)."""
        return self.tokenizer.save(path)

    @classmethod
    def load(cls, path: str | Path) -> CharTokenizer:
        """Read a char tokenizer.json written by `save`, or the legacy ``{"type": "char", "vocab": [...]}``."""
        return cls.from_tokenizer(Tokenizer.load(path))

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, unk={self.unk!r})"


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
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction={val_fraction!r} must lie strictly between 0 and 1, e.g. 0.1")
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
