"""`build_data(data_config)`: one call from a data config to train/val/test datasets plus what they imply."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from bigmodels.config import DataConfig
from bigmodels.data.cifar import load_cifar10, load_cifar100
from bigmodels.data.images import ImageFolder, ImageTensorDataset, load_digits_data, load_mnist, split_dataset
from bigmodels.data.text import TokenWindows, pydoc_corpus, read_text, split_text
from bigmodels.data.tokenizers import CharTokenizer, Tokenizer, load_tokenizer
from bigmodels.data.transforms import BatchTransform, dataset_mean_std, image_transforms
from bigmodels.errors import ConfigError, DataError

__all__ = ["DATASETS", "DataBundle", "build_data"]

logger = logging.getLogger(__name__)

IMAGE_CLASSIFICATION = "image_classification"
LANGUAGE_MODELING = "language_modeling"
MNIST_MEAN_STD = ([0.1307], [0.3081])  # the customary MNIST train-set statistics
# per-channel mean and (population) std of the 50,000 train images, in 0..1 units
CIFAR10_MEAN_STD = ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])
CIFAR100_MEAN_STD = ([0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762])
_STATS_SAMPLE = 2048  # decoded-on-access datasets: images sampled (seeded) for mean/std
_PATH_HINTS = {
    "mnist": "the directory holding the four MNIST idx files, e.g. ../shared/data/mnist",
    "cifar10": "the CIFAR-10 python-version directory (data_batch_1..5, test_batch, batches.meta) or "
               "cifar-10-python.tar.gz",
    "cifar100": "the CIFAR-100 python-version directory (train, test, meta) or cifar-100-python.tar.gz",
    "imagefolder": "a folder of <class_name>/<image> sub-folders, or one with train/ and val/ inside",
    "text": "a UTF-8 .txt file, e.g. ../shared/data/tinyshakespeare/input.txt",
    "sst2": "the GLUE SST-2 directory with train.tsv and dev.tsv (and test.tsv, scored when labelled), e.g. "
            "../shared/data/sst2",
    "conll2003": "the CoNLL-2003 directory with train.txt, valid.txt and optionally test.txt, e.g. "
                 "../shared/data/conll2003",
    "mlm": "a UTF-8 .txt corpus, documents separated by blank lines (default: the embedded pydoc corpus)",
    "translation": "a directory of aligned files {split}.{lang}[.gz] (splits train, val and test), e.g. "
                   "../shared/data/multi30k",
}


@dataclass
class DataBundle:
    """Everything a trainer needs from data; `model_args` and `meta` are plain, JSON-friendly dicts."""

    task: str  # "image_classification" | "language_modeling" | ... | "translation"
    train: Dataset
    val: Dataset
    test: Dataset | None
    # images: in_chans, img_size, num_classes; text: vocab_size; translation: src/tgt_vocab_size + special ids
    model_args: dict[str, Any]
    train_transform: BatchTransform | None  # None for text
    eval_transform: BatchTransform | None
    meta: dict[str, Any] = field(default_factory=dict)  # images: class_names, mean, std, img_size, in_chans
    tokenizer: CharTokenizer | Tokenizer | None = None  # saved with every checkpoint


def _stats_images(ds: Dataset, seed: int) -> Tensor:
    """uint8 (N, C, H, W) to compute mean/std from: all of a tensor dataset, else a seeded sample."""
    if hasattr(ds, "images"):
        return ds.images
    count = min(len(ds), _STATS_SAMPLE)
    picks = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:count]
    return torch.stack([ds[int(i)][0] for i in picks])


def _image_bundle(
    train: Dataset, val: Dataset, test: Dataset | None, *, class_names: list[str], in_chans: int,
    data_size: tuple[int, int], img_size: int | None, resize_in_transform: bool,
    mean_std: tuple[list[float], list[float]] | None, crop_padding: int, hflip: bool,
    random_resized_crop: bool, rrc_scale: tuple[float, float], seed: int,
) -> DataBundle:
    mean, std = mean_std or dataset_mean_std(_stats_images(train, seed))
    if min(std) <= 0:
        logger.warning("a channel of the train images is constant (std 0); normalising it with std 1")
        std = [s if s > 0 else 1.0 for s in std]
    resize = img_size if resize_in_transform else None
    height, width = (img_size, img_size) if img_size is not None else data_size
    size = height if height == width else [height, width]
    meta = {"class_names": class_names, "mean": mean, "std": std, "img_size": size, "in_chans": in_chans}
    return DataBundle(
        task=IMAGE_CLASSIFICATION,
        train=train,
        val=val,
        test=test,
        model_args={"in_chans": in_chans, "img_size": size, "num_classes": len(class_names)},
        train_transform=image_transforms(
            mean, std, train=True, crop_padding=crop_padding, hflip=hflip, img_size=resize,
            random_resized_crop=random_resized_crop, rrc_scale=rrc_scale,
        ),
        eval_transform=image_transforms(mean, std, train=False, img_size=resize),
        meta=meta,
    )


def _tensor_image_bundle(
    train: ImageTensorDataset, test: ImageTensorDataset,
    mean_std: tuple[list[float], list[float]] | None, *, val_fraction: float, seed: int, **options: Any,
) -> DataBundle:
    train, val = split_dataset(train, val_fraction, seed)
    _, in_chans, height, width = train.images.shape
    return _image_bundle(
        train, val, test, class_names=train.class_names, in_chans=in_chans, data_size=(height, width),
        resize_in_transform=True, mean_std=mean_std, seed=seed, **options,
    )


def _digits(path: str | None, *, val_fraction: float, seed: int, **options: Any) -> DataBundle:
    # The held-out test set does not move with `seed`, so results across seeds stay comparable.
    train, test = load_digits_data(test_fraction=0.2, seed=0)
    return _tensor_image_bundle(train, test, None, val_fraction=val_fraction, seed=seed, **options)


def _mnist(path: str, *, val_fraction: float, seed: int, **options: Any) -> DataBundle:
    train, test = load_mnist(path)
    return _tensor_image_bundle(train, test, MNIST_MEAN_STD, val_fraction=val_fraction, seed=seed, **options)


def _cifar10(path: str, *, val_fraction: float, seed: int, **options: Any) -> DataBundle:
    train, test = load_cifar10(path)
    return _tensor_image_bundle(train, test, CIFAR10_MEAN_STD, val_fraction=val_fraction, seed=seed, **options)


def _cifar100(path: str, *, val_fraction: float, seed: int, **options: Any) -> DataBundle:
    train, test = load_cifar100(path)
    return _tensor_image_bundle(train, test, CIFAR100_MEAN_STD, val_fraction=val_fraction, seed=seed, **options)


def _same_layout(reference: ImageFolder, other: ImageFolder) -> None:
    if other.class_names != reference.class_names:
        raise DataError(
            f"class folders differ: {reference.root} has {reference.class_names} but {other.root} has "
            f"{other.class_names}; give every split the same class sub-folders"
        )
    if other.image_size != reference.image_size:
        raise DataError(
            f"images in {reference.root} are {reference.image_size} but in {other.root} "
            f"{other.image_size} (H, W); pass img_size=N to resize all of them to N x N"
        )


def _imagefolder(
    path: str, *, val_fraction: float, seed: int, img_size: int | None, **options: Any
) -> DataBundle:
    root = Path(path)
    if (root / "train").is_dir():  # root/train, root/val (or split from train), optional root/test
        base = ImageFolder(root / "train", img_size, channels=None)
        splits = {name: ImageFolder(root / name, img_size, base.channels)
                  for name in ("val", "test") if (root / name).is_dir()}
        for folder in splits.values():
            _same_layout(base, folder)
        if "val" in splits:
            train, val = base, splits["val"]
        else:
            train, val = split_dataset(base, val_fraction, seed)
        test = splits.get("test")
    else:
        base = ImageFolder(root, img_size, channels=None)
        (train, val), test = split_dataset(base, val_fraction, seed), None
    return _image_bundle(
        train, val, test, class_names=base.class_names, in_chans=base.channels, data_size=base.image_size,
        img_size=img_size, resize_in_transform=False, mean_std=None, seed=seed, **options,
    )


def bpe_vocab_size(spec: str) -> int:
    """N of a ``data.tokenizer="bpe:N"`` spec (a byte-level BPE of N tokens to train on the training split)."""
    kind, _, size = spec.partition(":")
    if kind != "bpe" or not size.isdigit() or int(size) < 260:
        raise ConfigError(f"data.tokenizer={spec!r}: give a tokenizer file/directory, or bpe:N with "
                          "N >= 260 (a byte-level BPE of N tokens trained on the training text)")
    return int(size)


def _text_bundle(text: str, source: str, *, val_fraction: float, block_size: int, tokenizer=None) -> DataBundle:
    """Language-model windows over ``text``: characters by default; ``tokenizer`` may be a Tokenizer, or
    ``"bpe:N"`` to train a byte-level BPE of N tokens on the training split."""
    train_text, val_text = split_text(text, val_fraction)
    if isinstance(tokenizer, str):
        tokenizer = Tokenizer.train_bpe([train_text], bpe_vocab_size(tokenizer))
    tokenizer = tokenizer if tokenizer is not None else CharTokenizer.fit(text)
    if len(val_text) < block_size + 1:
        raise DataError(
            f"the val split of {source} (last {val_fraction} = {len(val_text)} chars) is shorter than "
            f"block_size + 1 = {block_size + 1}; lower block_size or raise val_fraction"
        )

    def ids(part: str) -> list[int]:
        return tokenizer.encode(part, add_special_tokens=False, truncation=False)

    def windows(part: str) -> TokenWindows:
        return TokenWindows(torch.tensor(ids(part), dtype=torch.int64), block_size)

    return DataBundle(
        task=LANGUAGE_MODELING,
        train=windows(train_text),
        val=windows(val_text),
        test=None,
        model_args={"vocab_size": tokenizer.vocab_size},
        train_transform=None,
        eval_transform=None,
        meta={"block_size": block_size},  # what the windows need of the model's context (see the trainer's check)
        tokenizer=tokenizer,
    )


def _needs_tokenizer(name: str, tokenizer) -> None:
    if tokenizer is None:
        raise DataError(
            f"data {name!r} is text for a pretrained model: give its tokenizer, i.e. start from a pretrained "
            "model with init=<model directory> (its tokenizer.json or vocab.txt is used)"
        )


def _sst2(path: str, *, tokenizer=None, max_length: int = 128, **_: Any) -> DataBundle:
    """GLUE SST-2: train.tsv to train on, dev.tsv (the public evaluation split) to validate, and test.tsv when it
    is there with labels. GLUE's own test.tsv has none: the split is then left out and ``meta["unlabelled_splits"]``
    says why, so that evaluating it fails with that reason instead of a made-up score."""
    from bigmodels.data.nlp import read_sst2, split_files, sst2_unlabelled
    from bigmodels.data.nlp_datasets import TextClassificationDataset

    _needs_tokenizer("sst2", tokenizer)
    present = split_files(path, "sst2")
    reason = sst2_unlabelled(path, "test") if "test" in present else None
    unlabelled = {"test": reason} if reason is not None else {}
    if reason is not None:
        logger.info("sst2: the test split is left out: %s", reason)
    names = ["train", "val"] + (["test"] if "test" in present and reason is None else [])
    splits = {s: read_sst2(path, s) for s in names}
    data = {s: TextClassificationDataset([t for t, _ in rows], [y for _, y in rows], tokenizer, max_length)
            for s, rows in splits.items()}
    meta = {"class_names": ["negative", "positive"], "max_length": max_length,
            "splits": {s: present[s].name if s in present else None for s in ("train", "val", "test")}}
    if unlabelled:
        meta["unlabelled_splits"] = unlabelled
    return DataBundle(
        task="sequence_classification", train=data["train"], val=data["val"], test=data.get("test"),
        model_args={"num_labels": 2}, train_transform=None, eval_transform=None, meta=meta, tokenizer=tokenizer,
    )


def _conll2003(path: str, *, tokenizer=None, max_length: int = 128, **_: Any) -> DataBundle:
    """CoNLL-2003 English NER (IOB2 tags): train (train.txt), val (valid.txt) and, when present, test (test.txt);
    see `bigmodels.data.nlp.SPLIT_FILES` for the other names each split goes by."""
    from bigmodels.data.nlp import conll_label_list, read_conll2003, split_files
    from bigmodels.data.nlp_datasets import TokenClassificationDataset

    _needs_tokenizer("conll2003", tokenizer)
    present = split_files(path, "conll2003")
    splits = {s: read_conll2003(path, s) for s in ("train", "val", *(["test"] if "test" in present else []))}
    labels = conll_label_list([tags for _, tags in splits["train"]])
    data = {s: TokenClassificationDataset([w for w, _ in rows], [t for _, t in rows], tokenizer, max_length, labels)
            for s, rows in splits.items()}
    return DataBundle(
        task="token_classification", train=data["train"], val=data["val"], test=data.get("test"),
        model_args={"num_labels": len(labels)}, train_transform=None, eval_transform=None,
        meta={"label_list": labels, "max_length": max_length,
              "splits": {s: present[s].name if s in present else None for s in ("train", "val", "test")}},
        tokenizer=tokenizer,
    )


BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _mlm(path: str | None, *, tokenizer=None, max_length: int = 128, **_: Any) -> DataBundle:
    """BERT pretraining on a text file (default: the embedded pydoc corpus): masked LM (80/10/10 masking of
    15% of tokens) + next-sentence prediction over sentence pairs; documents are blocks between blank lines,
    the last 10% validate. Without a tokenizer, a character-level one with BERT's special tokens is fit."""
    from bigmodels.data.nlp_datasets import MaskedLMDataset, split_documents

    text = read_text(path) if path is not None else pydoc_corpus()
    if tokenizer is None:
        tokenizer = Tokenizer.train_chars(text, special_tokens=BERT_SPECIAL_TOKENS, unk_token="[UNK]")
    documents = split_documents(text)
    if len(documents) < 2:
        raise DataError(f"{path} holds {len(documents)} document(s); masked-LM pretraining needs at least 2 "
                        "(documents are separated by blank lines)")
    cut = max(1, len(documents) * 9 // 10)
    return DataBundle(
        task="masked_language_modeling",
        train=MaskedLMDataset(documents[:cut], tokenizer, max_length, seed=0),
        val=MaskedLMDataset(documents[cut:], tokenizer, max_length, seed=1),
        test=None, model_args={"vocab_size": tokenizer.vocab_size}, train_transform=None, eval_transform=None,
        meta={"max_length": max_length}, tokenizer=tokenizer,
    )


def _translation(path: str, *, tokenizer=None, max_length: int = 128, src_lang: str | None = None,
                 tgt_lang: str | None = None) -> DataBundle:
    """Sentence-level translation from ``path/{split}.{src_lang|tgt_lang}[.gz]``: train; val (or valid, dev);
    test (test_2016_flickr, else test; optional). ``tokenizer="bpe:N"`` trains one byte-level BPE on both
    sides of the train split; a Tokenizer (a trained model's) is used as it is. `meta` records the languages,
    the split files used and the tokenizer's special ids; the raw sentences stay on the datasets
    (``.sources`` / ``.targets``), the references BLEU is scored against."""
    from bigmodels.data.parallel import read_split

    if not src_lang or not tgt_lang or src_lang == tgt_lang:
        raise ConfigError(f"data 'translation' needs two different languages, got data.src_lang={src_lang!r} and "
                          f"data.tgt_lang={tgt_lang!r}: the file suffixes, e.g. data.src_lang=en data.tgt_lang=de")
    if tokenizer is None:
        raise ConfigError("data 'translation' needs data.tokenizer=bpe:N (a joint BPE of N tokens trained on both "
                          "languages, e.g. bpe:8000), a tokenizer file, or init=<a translation model>")
    found = {split: read_split(path, split, src_lang, tgt_lang, required=split != "test")
             for split in ("train", "val", "test")}
    pairs = {split: f[1] for split, f in found.items() if f is not None}
    files = {split: f[0] if f is not None else None for split, f in found.items()}
    return _parallel_bundle(pairs, files, tokenizer=tokenizer, max_length=max_length, src_lang=src_lang,
                            tgt_lang=tgt_lang)


def _numbers(*, tokenizer=None, max_length: int = 128, seed: int = 0) -> DataBundle:
    """The embedded numbers corpus (:mod:`bigmodels.data.numbers`): English -> German number words,
    20,000 train / 1,000 val / 1,000 test pairs drawn without overlap from 0..999,999."""
    from bigmodels.data.numbers import SPLITS, number_pairs

    if tokenizer is None:
        raise ConfigError("data 'numbers' needs data.tokenizer=bpe:N (a joint BPE trained on both languages, "
                          "e.g. bpe:1000) or init=<a translation model>")
    pairs = number_pairs(SPLITS, seed=seed)
    files = {split: f"embedded numbers corpus ({split}, seed {seed})" for split in pairs}
    return _parallel_bundle(pairs, files, tokenizer=tokenizer, max_length=max_length, src_lang="en", tgt_lang="de")


def _parallel_bundle(pairs: dict[str, list[tuple[str, str]]], files: dict[str, Any], *, tokenizer, max_length: int,
                     src_lang: str, tgt_lang: str) -> DataBundle:
    """A translation bundle from (source, target) sentence pairs per split (train, val, optional test)."""
    from bigmodels.data.parallel import ParallelDataset, seq2seq_token_ids, train_joint_bpe

    if isinstance(tokenizer, str):
        tokenizer = train_joint_bpe(pairs["train"], bpe_vocab_size(tokenizer))
    special = seq2seq_token_ids(tokenizer)  # checks pad / bos / eos before tokenizing anything
    data = {split: ParallelDataset(rows, tokenizer, max_length) for split, rows in pairs.items()}
    meta = {
        "src_lang": src_lang, "tgt_lang": tgt_lang, "max_length": max_length,
        "splits": files,
        "tokenizer": {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size,
                      "special_tokens": dict(tokenizer.special_tokens), **special},
    }
    return DataBundle(
        task="translation", train=data["train"], val=data["val"], test=data.get("test"),
        model_args={"src_vocab_size": tokenizer.vocab_size, "tgt_vocab_size": tokenizer.vocab_size, **special},
        train_transform=None, eval_transform=None, meta=meta, tokenizer=tokenizer,
    )


def _pydoc(path: str | None, **options: Any) -> DataBundle:
    return _text_bundle(pydoc_corpus(), "the pydoc corpus", **options)


def _text(path: str, **options: Any) -> DataBundle:
    return _text_bundle(read_text(path), str(path), **options)


_IMAGE_BUILDERS: dict[str, Callable[..., DataBundle]] = {
    "digits": _digits,
    "mnist": _mnist,
    "cifar10": _cifar10,
    "cifar100": _cifar100,
    "imagefolder": _imagefolder,
}
_TEXT_BUILDERS: dict[str, Callable[..., DataBundle]] = {"pydoc": _pydoc, "text": _text}
_PRETRAINED_TEXT_BUILDERS: dict[str, Callable[..., DataBundle]] = {
    "sst2": _sst2, "conll2003": _conll2003, "mlm": _mlm,
}
PARALLEL_DATASETS = ("translation", "numbers")  # sentence pairs for encoder-decoders (scored with BLEU/chrF)
DATASETS = (*_IMAGE_BUILDERS, *_TEXT_BUILDERS, *_PRETRAINED_TEXT_BUILDERS, *PARALLEL_DATASETS)


def _configured_tokenizer(spec: str | None) -> Tokenizer | CharTokenizer | str | None:
    """``data.tokenizer``: None, ``"bpe:N"`` (trained by the builder), or a tokenizer file or directory."""
    if spec is None or spec.startswith("bpe:"):
        return spec
    if not Path(spec).exists():
        raise ConfigError(f"data.tokenizer={spec!r} is neither a tokenizer file or directory nor bpe:N; give one "
                          "of those, or pass a loaded tokenizer: build_data(data, tokenizer=...)")
    return load_tokenizer(spec)


def _check_val_fraction(name: str, path: str | None, fraction: float) -> None:
    """``data.val_fraction`` is in [0, 1) as DataConfig says; 0 (no split carved) only for data with a validation
    split of its own, since training and evaluation need one."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"data.val_fraction={fraction!r} must be in [0, 1), e.g. 0.1 (0: carve no validation "
                          "split, for data that has one of its own)")
    own_val = name in _PRETRAINED_TEXT_BUILDERS or name in PARALLEL_DATASETS or (
        name == "imagefolder" and path is not None and (Path(path) / "train").is_dir()
        and (Path(path) / "val").is_dir())
    if fraction == 0.0 and not own_val:
        raise ConfigError(f"data.val_fraction=0 carves no validation split, but data {name!r} has none of its own "
                          "to validate on; use a fraction in (0, 1), e.g. data.val_fraction=0.1")


def build_data(data: DataConfig | str, *, tokenizer: Tokenizer | CharTokenizer | str | None = None) -> DataBundle:
    """Datasets, transforms and model arguments for the data set that ``data`` (a :class:`DataConfig`, or just
    the name of an embedded data set) describes.

    Names (``data.name``): `digits` (embedded), `mnist` (path: idx directory), `cifar10` / `cifar100` (path: the
    python-version directory or its .tar.gz), `imagefolder` (path: root), `pydoc` (embedded text), `text` (path:
    .txt file), for pretrained text models (they need a ``tokenizer``; ``max_length`` truncates) `sst2` (path:
    directory), `conll2003` (path: directory) and `mlm`, `translation` (path: a directory of parallel files
    ``{split}.{lang}[.gz]``; ``src_lang`` / ``tgt_lang`` name the pair, a ``bpe:N`` tokenizer trains a joint
    BPE, ``max_length`` truncates) and `numbers` (embedded English -> German number words, same options).
    Image options (`img_size`, `crop_padding`, `hflip`, `random_resized_crop` with its area range `rrc_scale`)
    apply to image data; `block_size` to text. ``tokenizer`` (a tokenizer object, or ``"bpe:N"``) takes the place
    of ``data.tokenizer`` (a tokenizer file or directory, or ``"bpe:N"``), e.g. a pretrained model's.

    >>> from bigmodels.config import DataConfig
    >>> data = build_data(DataConfig(name="digits", img_size=16, crop_padding=2))
    >>> data.model_args
    {'in_chans': 1, 'img_size': 16, 'num_classes': 10}
    """
    if isinstance(data, str):
        data = DataConfig(name=data)
    if not isinstance(data, DataConfig):
        raise ConfigError(f"build_data takes a DataConfig (or a data set name), got {type(data).__name__}; "
                          "e.g. build_data(DataConfig(name='mnist', path=DIR))")
    name, path, max_length = data.name, data.path, data.max_length
    tokenizer = tokenizer if tokenizer is not None else _configured_tokenizer(data.tokenizer)
    if name not in DATASETS:
        raise ConfigError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    _check_val_fraction(name, path, data.val_fraction)
    if name in _PATH_HINTS and path is None and name != "mlm":  # mlm defaults to the embedded corpus
        raise DataError(f"data set {name!r} needs path=... (data.path): {_PATH_HINTS[name]}")
    if name not in _PATH_HINTS and path is not None:
        raise ConfigError(f"data set {name!r} is embedded and takes no data.path, got {path!r}; drop it")
    augment = data.img_size is not None or data.crop_padding or data.hflip or data.random_resized_crop
    if name != "translation" and (data.src_lang is not None or data.tgt_lang is not None):
        raise ConfigError(f"data.src_lang / data.tgt_lang name the language pair of translation data, not of "
                          f"{name!r}; drop them")
    if name in PARALLEL_DATASETS:
        if augment:
            raise ConfigError("img_size/crop_padding/hflip/random_resized_crop apply to image data, not to "
                              f"{name}; drop them")
        if name == "numbers":
            bundle = _numbers(tokenizer=tokenizer, max_length=max_length, seed=data.seed)
        else:
            bundle = _translation(path, tokenizer=tokenizer, max_length=max_length, src_lang=data.src_lang,
                                  tgt_lang=data.tgt_lang)
    elif name in _PRETRAINED_TEXT_BUILDERS:
        bundle = _PRETRAINED_TEXT_BUILDERS[name](path, tokenizer=tokenizer, max_length=max_length)
    elif name in _TEXT_BUILDERS:
        if augment:
            raise ConfigError(
                f"img_size/crop_padding/hflip/random_resized_crop apply to image data, not to the text data set "
                f"{name!r}; drop them"
            )
        bundle = _TEXT_BUILDERS[name](path, val_fraction=data.val_fraction, block_size=data.block_size,
                                      tokenizer=tokenizer)
    else:
        bundle = _IMAGE_BUILDERS[name](
            path, val_fraction=data.val_fraction, seed=data.seed, img_size=data.img_size,
            crop_padding=data.crop_padding, hflip=data.hflip, random_resized_crop=data.random_resized_crop,
            rrc_scale=data.rrc_scale,
        )
    logger.info(
        "data %s: %d train, %d val, %s test items; model args %s",
        name, len(bundle.train), len(bundle.val), len(bundle.test) if bundle.test is not None else "no",
        bundle.model_args,
    )
    return bundle
