"""Parallel text for translation: aligned sentence files, a joint BPE over both languages, and the
teacher-forcing dataset a sequence-to-sequence model trains on.

Files hold one sentence a line, UTF-8, plain or gzip-compressed (``.gz``); line ``i`` of the source file
translates line ``i`` of the target file. Lines are split on ``\\n`` only (a stray U+2028 inside a sentence
does not shift the alignment) and stripped; a pair where either side is empty is skipped (logged).

Batches (`ParallelDataset.get_batch`) follow the Hugging Face encoder-decoder convention:

- ``input_ids`` (B, S): the source tokens, no special tokens, right-padded with pad; ``attention_mask`` 1/0.
- ``labels`` (B, T): the target tokens followed by eos, padded with -100 (`IGNORE_INDEX`).
- ``decoder_input_ids`` (B, T): ``labels`` shifted right behind the decoder start token (bos), padded with
  pad, so position t sees the target up to t - 1 and predicts label t (teacher forcing).

With ``max_length=L`` the source keeps its first L tokens and the target its first L - 1, so the labels
(target + eos) and the decoder inputs are at most L long too.

>>> pairs = [("a small dog", "ein kleiner Hund"), ("two dogs", "zwei Hunde")] * 50
>>> tok = train_joint_bpe(pairs, vocab_size=300)
>>> tok.pad_id, tok.bos_id, tok.eos_id
(0, 2, 3)
>>> x, y = ParallelDataset(pairs, tok, max_length=16).get_batch(torch.tensor([0, 1]))
>>> sorted(x), tuple(y.shape) == tuple(x["decoder_input_ids"].shape)
(['attention_mask', 'decoder_input_ids', 'input_ids'], True)
"""

from __future__ import annotations

import gzip
import logging
import zlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from bigmodels.data.nlp_datasets import IGNORE_INDEX, _pad
from bigmodels.data.tokenizers import Tokenizer
from bigmodels.errors import ConfigError, DataError

__all__ = ["SPLIT_NAMES", "ParallelDataset", "encode_sources", "read_lines", "read_parallel", "read_split",
           "seq2seq_token_ids", "source_batch", "train_joint_bpe"]

logger = logging.getLogger(__name__)

# The special tokens of a joint BPE, in id order: train_bpe's own layout, shared with the language-model BPE,
# so pad=0, unk=1, bos=2, eos=3 (byte-level BPE never emits unk; it is there for tokenizers that do).
SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")
# File names a split may go by, in order of preference (Multi30k calls its 2016 test set test_2016_flickr)
SPLIT_NAMES = {"train": ("train",), "val": ("val", "valid", "dev"), "test": ("test_2016_flickr", "test")}


def read_lines(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file, plain or ``.gz`` (gzip by its magic bytes), without line breaks; a
    final line break does not make an extra empty line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; pass an existing text file (plain or .gz), one sentence a line") \
            from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path} is a damaged gzip file ({exc}); download or compress it again") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 ({exc.reason}); re-encode the file as UTF-8") from None
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    return lines[:-1] if lines and lines[-1] == "" else lines


def read_parallel(src_path: str | Path, tgt_path: str | Path) -> list[tuple[str, str]]:
    """Aligned ``(source, target)`` sentence pairs from two files, each side stripped.

    Pairs where either side is empty are skipped and counted in a log line; files of different line counts,
    or with no non-empty pair, raise `DataError`.

    >>> root = "../shared/data/multi30k/"
    >>> pairs = read_parallel(root + "val.en.gz", root + "val.de.gz")  # doctest: +SKIP
    >>> len(pairs), pairs[0][1]  # doctest: +SKIP
    (1014, 'Eine Gruppe von Männern lädt Baumwolle auf einen Lastwagen.')
    """
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise DataError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}; parallel files must be "
                        "aligned line by line (one sentence and its translation per line)")
    pairs = [(s.strip(), t.strip()) for s, t in zip(src, tgt, strict=True)]
    kept = [(s, t) for s, t in pairs if s and t]
    if not kept:
        raise DataError(f"{src_path} and {tgt_path} hold no pair of non-empty lines ({len(pairs)} lines); "
                        "pass files with one sentence a line")
    if len(kept) < len(pairs):
        logger.warning("%s / %s: skipped %d of %d pairs with an empty side", src_path, tgt_path,
                       len(pairs) - len(kept), len(pairs))
    return kept


def _lang_file(directory: Path, split: str, lang: str) -> Path | None:
    for name in (f"{split}.{lang}", f"{split}.{lang}.gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def read_split(directory: str | Path, split: str, src_lang: str, tgt_lang: str, *, required: bool = True
               ) -> tuple[str, list[tuple[str, str]]] | None:
    """(file name, sentence pairs) of ``split`` ("train", "val" or "test") of a parallel-data directory: the
    first of `SPLIT_NAMES` [split] with both ``{name}.{src_lang}[.gz]`` and ``{name}.{tgt_lang}[.gz]``.
    An absent split raises `DataError` listing the files there (or gives None when not ``required``);
    one language without the other always raises.

    >>> name, pairs = read_split("../shared/data/multi30k", "test", "en", "de")  # doctest: +SKIP
    >>> name, len(pairs)  # doctest: +SKIP
    ('test_2016_flickr', 1000)
    """
    directory = Path(directory)
    if split not in SPLIT_NAMES:
        raise ConfigError(f"split {split!r} is not one of {', '.join(SPLIT_NAMES)}")
    if not directory.is_dir():
        raise DataError(f"{directory} is not a directory; pass the folder of the parallel files "
                        "{split}.{lang}[.gz], e.g. ../shared/data/multi30k")
    for name in SPLIT_NAMES[split]:
        src, tgt = _lang_file(directory, name, src_lang), _lang_file(directory, name, tgt_lang)
        if src is not None and tgt is not None:
            return name, read_parallel(src, tgt)
        if src is not None or tgt is not None:
            have, lang = (src, tgt_lang) if src is not None else (tgt, src_lang)
            raise DataError(f"{directory} has {have.name} but no {name}.{lang}[.gz]; give both sides of the "
                            f"{name} split, or check data.src_lang / data.tgt_lang")
    if not required:
        return None
    names = " or ".join(f"{n}.{src_lang}[.gz]" for n in SPLIT_NAMES[split])
    present = ", ".join(sorted(p.name for p in directory.iterdir())[:12]) or "none"
    raise DataError(f"{directory} has no {split} split ({names}, with its {tgt_lang} side); files there: {present}")


def train_joint_bpe(pairs: Sequence[tuple[str, str]], vocab_size: int) -> Tokenizer:
    """One byte-level BPE of ``vocab_size`` tokens learned from both sides of ``pairs`` (so the two languages
    share subwords, and embeddings can be shared), with `SPECIAL_TOKENS` at ids 0..3."""
    texts = [s for pair in pairs for s in pair]
    return Tokenizer.train_bpe(texts, vocab_size, special_tokens=SPECIAL_TOKENS)


def seq2seq_token_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """The special ids a translation model needs: pad, bos, eos and the decoder start token (bos)."""
    roles = {"pad": tokenizer.pad_id, "bos": tokenizer.bos_id, "eos": tokenizer.eos_id}
    missing = [role for role, i in roles.items() if i is None]
    if missing:
        raise ConfigError(f"{tokenizer!r} lacks the special tokens {missing} that translation needs; use "
                          "data.tokenizer=bpe:N (a joint BPE with <pad> <unk> <bos> <eos>) or a tokenizer with them")
    return {"pad_token_id": roles["pad"], "bos_token_id": roles["bos"], "eos_token_id": roles["eos"],
            "decoder_start_token_id": roles["bos"]}


def encode_sources(tokenizer: Tokenizer, texts: Sequence[str], max_length: int | None = None) -> list[list[int]]:
    """Source token ids as the encoder sees them, in training and in translation alike: no special tokens,
    the first ``max_length`` tokens (all when None)."""
    if not texts:
        return []
    return tokenizer.encode_batch(list(texts), add_special_tokens=False, max_length=max_length,
                                  truncation=max_length is not None, padding=False,
                                  return_tensors=False)["input_ids"]


def source_batch(rows: Sequence[Sequence[int]], pad_id: int) -> dict[str, Tensor]:
    """``input_ids`` (B, S) right-padded with ``pad_id`` and ``attention_mask`` (B, S), 1 on real tokens."""
    return {"input_ids": _pad(rows, pad_id), "attention_mask": _pad([[1] * len(r) for r in rows], 0)}


class ParallelDataset(Dataset):
    """Sentence pairs, tokenized once with a joint tokenizer; ``get_batch(indices)`` pads to the longest
    item of the batch (see the module docstring for the layout and the truncation rule).

    ``sources`` and ``targets`` keep the raw sentences (the references BLEU is computed against);
    ``lengths`` gives each item's longer side, for length-grouped batching.
    """

    def __init__(self, pairs: Sequence[tuple[str, str]], tokenizer: Tokenizer, max_length: int = 128) -> None:
        if not pairs:
            raise DataError("ParallelDataset got no sentence pairs; pass a list of (source, target) strings")
        if not isinstance(max_length, int) or max_length < 2:
            raise ConfigError(f"max_length={max_length!r} leaves no room for a target token and eos; pass "
                              "e.g. data.max_length=64")
        ids = seq2seq_token_ids(tokenizer)
        self.pad_id, self.eos_id = ids["pad_token_id"], ids["eos_token_id"]
        self.decoder_start_id = ids["decoder_start_token_id"]
        self.max_length = max_length
        self.sources = [s for s, _ in pairs]
        self.targets = [t for _, t in pairs]
        self.src_ids = encode_sources(tokenizer, self.sources, max_length)
        self.tgt_ids = encode_sources(tokenizer, self.targets, max_length - 1)
        empty = [i for i, row in enumerate(self.src_ids) if not row]
        if empty:
            raise DataError(f"{len(empty)} source sentences (first: item {empty[0]}) tokenize to nothing; drop the "
                            "empty pairs (read_parallel does)")

    def __len__(self) -> int:
        return len(self.sources)

    @property
    def lengths(self) -> list[int]:
        """Tokens of each item's longer side (source, or target + eos)."""
        return [max(len(s), len(t) + 1) for s, t in zip(self.src_ids, self.tgt_ids, strict=True)]

    def get_batch(self, indices: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """(inputs {input_ids, attention_mask, decoder_input_ids}, labels (B, T) with -100 on padding)."""
        idx = indices.tolist()
        inputs = source_batch([self.src_ids[i] for i in idx], self.pad_id)
        targets = [self.tgt_ids[i] for i in idx]
        inputs["decoder_input_ids"] = _pad([[self.decoder_start_id, *t] for t in targets], self.pad_id)
        labels = _pad([[*t, self.eos_id] for t in targets], IGNORE_INDEX)
        return inputs, labels

    def __getitem__(self, index: int) -> tuple[dict[str, Tensor], Tensor]:
        inputs, labels = self.get_batch(torch.tensor([int(index)]))
        return {k: v[0] for k, v in inputs.items()}, labels[0]
