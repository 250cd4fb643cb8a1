"""Character-level text data: a tokenizer, corpora, and fixed-length windows for language modelling."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset

from bigmodels.errors import ConfigError, DataError

__all__ = ["CharTokenizer", "TokenWindows", "pydoc_corpus", "read_text", "split_text"]

Unknown = Literal["error", "replace", "skip"]


class CharTokenizer:
    """One id per character; the vocabulary is the sorted distinct characters of the training text.

    `encode` handles characters outside the vocabulary by `unknown`:
    "error" (default) raises `DataError` naming them; "replace" maps each to the `unk` character
    (the tokenizer must have one: `CharTokenizer.fit(text, unk="?")`); "skip" drops them.

    >>> tok = CharTokenizer.fit("hello world")
    >>> tok.decode(tok.encode("hello"))
    'hello'
    >>> tok.encode("hi!", unknown="skip") == tok.encode("h")
    True
    """

    def __init__(self, vocab: Iterable[str], unk: str | None = None) -> None:
        self.vocab = list(vocab)
        if not self.vocab or any(not isinstance(c, str) or len(c) != 1 for c in self.vocab):
            raise DataError(
                f"a char vocabulary must be a non-empty list of single characters, got {self.vocab[:10]}"
            )
        if len(set(self.vocab)) != len(self.vocab):
            raise DataError("the char vocabulary has duplicate characters; each character must appear once")
        if unk is not None and unk not in self.vocab:
            raise DataError(f"unk={unk!r} is not in the vocabulary; add it to vocab or fit with unk={unk!r}")
        self.unk = unk
        self._stoi = {c: i for i, c in enumerate(self.vocab)}

    @classmethod
    def fit(cls, text: str, unk: str | None = None) -> CharTokenizer:
        """Vocabulary = sorted distinct characters of `text` (plus `unk`, a single character, if given)."""
        if not text:
            raise DataError("cannot fit a CharTokenizer on empty text; pass the training corpus")
        if unk is not None and len(unk) != 1:
            raise ConfigError(f"unk={unk!r} must be a single character, e.g. '?'")
        chars = set(text) | ({unk} if unk is not None else set())
        return cls(sorted(chars), unk=unk)

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
        try:
            return [stoi[c] for c in text]  # fast path: every character known
        except KeyError:
            pass
        if unknown == "skip":
            return [stoi[c] for c in text if c in stoi]
        if unknown == "replace":
            unk_id = stoi[self.unk]
            return [stoi.get(c, unk_id) for c in text]
        missing = sorted(set(text) - stoi.keys())
        occurrences = sum(1 for c in text if c not in stoi)
        shown = ", ".join(repr(c) for c in missing[:10]) + (", ..." if len(missing) > 10 else "")
        raise DataError(
            f"text has {len(missing)} distinct characters ({occurrences} in all) outside the tokenizer's "
            f"vocabulary of {self.vocab_size}: {shown}; pass unknown='replace' (with an unk character) or "
            "unknown='skip', or retrain the tokenizer on text that contains them"
        )

    def decode(self, ids: Iterable[int] | Tensor) -> str:
        """The text for `ids` (a list or a 1-D tensor)."""
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise DataError(
                f"ids {bad[:10]} are outside this tokenizer's vocabulary 0..{self.vocab_size - 1}; "
                "decode with the tokenizer the ids were encoded with"
            )
        return "".join(self.vocab[i] for i in ids)

    def save(self, path: str | Path) -> None:
        """Write `{"type": "char", "vocab": [...], "unk": null | "?"}` as JSON."""
        payload = {"type": "char", "vocab": self.vocab, "unk": self.unk}
        Path(path).write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> CharTokenizer:
        """Read a tokenizer written by `save`."""
        try:
            payload = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"cannot read tokenizer file {path}: {exc}; pass a file from save()") from exc
        if not isinstance(payload, dict) or payload.get("type") != "char" or "vocab" not in payload:
            raise DataError(
                f"{path} is not a char tokenizer file: expected JSON with type 'char' and a vocab list"
            )
        return cls(payload["vocab"], unk=payload.get("unk"))

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
