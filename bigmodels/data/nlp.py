"""Readers for the real NLP data sets in their original formats: STS-B, SST-2, CoNLL-2003.

They return plain Python structures and know no model or tokenizer; `bigmodels.data.nlp_datasets` turns them
into batches. A malformed line raises `DataError` naming ``file:line``. Every split whose file is present is
read: `split_files` finds them ("train", "val", "test", under the names each distribution uses, see
`SPLIT_FILES`); a split without labels (GLUE's SST-2 test.tsv) is reported as such, never given made-up labels.

>>> pairs = read_stsb("../shared/data/stsb", "test")  # doctest: +SKIP
>>> pairs[0]  # doctest: +SKIP
('A girl is styling her hair.', 'A girl is brushing her hair.', 2.5)
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from bigmodels.errors import DataError

__all__ = ["SPLIT_FILES", "conll_label_list", "read_conll2003", "read_sst2", "read_stsb", "sst2_unlabelled",
           "split_files"]

logger = logging.getLogger(__name__)

Sentence = tuple[list[str], list[str]]  # (tokens, IOB2 tags)

# data set -> (file name pattern for any split name, {canonical split: file names it goes by, in order})
SPLIT_FILES: dict[str, tuple[str, dict[str, tuple[str, ...]]]] = {
    "stsb": ("stsb-en-{}.csv", {"train": ("stsb-en-train.csv",), "val": ("stsb-en-dev.csv",),
                                "test": ("stsb-en-test.csv",)}),
    "sst2": ("{}.tsv", {"train": ("train.tsv",), "val": ("dev.tsv",), "test": ("test.tsv",)}),
    # NeuroNER / Hugging Face names, then the original distribution's eng.train / eng.testa / eng.testb
    "conll2003": ("{}.txt", {"train": ("train.txt", "eng.train"), "val": ("valid.txt", "dev.txt", "eng.testa"),
                             "test": ("test.txt", "eng.testb")}),
}
_CANONICAL = {"train": "train", "val": "val", "valid": "val", "dev": "val", "validation": "val", "test": "test"}


def split_files(path: str | Path, dataset: str) -> dict[str, Path]:
    """The splits of ``dataset`` ("stsb", "sst2" or "conll2003") present in the directory ``path``:
    {"train" | "val" | "test": file}, in that order, each the first file name of `SPLIT_FILES` that exists.
    A file given as ``path`` stands for train and val (the readers read it for any split).

    >>> split_files("../shared/data/conll2003", "conll2003")  # doctest: +SKIP
    {'train': PosixPath('../shared/data/conll2003/train.txt'), 'val': PosixPath('../shared/data/conll2003/valid.txt')}
    """
    path = Path(path)
    if path.is_file():
        return {"train": path, "val": path}
    found = {}
    for split, names in SPLIT_FILES[dataset][1].items():
        file = next((path / n for n in names if (path / n).is_file()), None)
        if file is not None:
            found[split] = file
    return found


def _split_file(path: str | Path, dataset: str, split: str) -> Path:
    """``path`` itself when it is a file, else the file of ``split`` in that directory (train / val / test under
    any of their names, or ``pattern.format(split)``); a clear error naming what is there when absent."""
    path = Path(path)
    if path.is_file():
        return path
    pattern, known = SPLIT_FILES[dataset]
    canonical = _CANONICAL.get(split)
    names = known[canonical] if canonical is not None else (pattern.format(split),)
    file = next((path / n for n in names if (path / n).is_file()), None) if path.is_dir() else None
    if file is None:
        present = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
        hint = f"files there: {', '.join(present)}" if present else "the directory does not exist"
        missing = f"{path / names[0]} does not exist" if len(names) == 1 else \
            f"{path} has no {split} file: none of {', '.join(names)}"
        raise DataError(f"{missing} ({hint}); pass the data set directory and one of its splits")
    return file


def _read(file: Path) -> str:
    """The UTF-8 text of ``file``; a decoding error names its line."""
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {file}: {exc}") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{file}:{line}: not valid UTF-8 ({exc.reason}); re-encode the file as UTF-8") from None


def _lines(file: Path) -> Iterable[tuple[int, str]]:
    """(line number from 1, line without its line break)."""
    for number, line in enumerate(_read(file).split("\n"), 1):
        yield number, line.rstrip("\r")


def read_stsb(path: str | Path, split: str = "train") -> list[tuple[str, str, float]]:
    """STS Benchmark rows ``(sentence1, sentence2, score 0-5)`` from ``stsb-en-{split}.csv`` (no header;
    fields may be quoted and hold commas). ``path``: the directory, or the csv file itself."""
    file = _split_file(path, "stsb", split)
    rows = []
    reader = csv.reader(io.StringIO(_read(file), newline=""))
    try:
        for row in reader:
            number = reader.line_num
            if not row:
                continue
            if len(row) != 3:
                raise DataError(f"{file}:{number}: expected 3 fields sentence1,sentence2,score, got {len(row)}: "
                                f"{row!r:.120}; quote fields that contain commas")
            try:
                score = float(row[2])
            except ValueError:
                score = math.nan
            if not 0.0 <= score <= 5.0:
                raise DataError(f"{file}:{number}: score {row[2]!r} is not a number from 0 to 5")
            rows.append((row[0], row[1], score))
    except csv.Error as exc:
        raise DataError(f"{file}:{reader.line_num}: unreadable csv ({exc}); check its quoting") from exc
    logger.info("stsb %s: %d pairs from %s", split, len(rows), file)
    return rows


def _no_labels(file: Path, header: list[str]) -> str | None:
    if "sentence" in header and "label" not in header:
        return (f"{file.name} has no label column (GLUE keeps the SST-2 test labels private), so it cannot be "
                "scored")
    return None


def sst2_unlabelled(path: str | Path, split: str = "test") -> str | None:
    """Why ``split`` of an SST-2 directory (or file) cannot be scored, or None when it has labels: GLUE's own
    test.tsv has the columns ``index`` and ``sentence`` only (its labels are not public).

    >>> sst2_unlabelled("glue_data/SST-2", "test")  # doctest: +SKIP
    'test.tsv has no label column (GLUE keeps the SST-2 test labels private), so it cannot be scored'
    """
    file = _split_file(path, "sst2", split)
    try:
        with file.open(encoding="utf-8", errors="replace", newline="") as f:
            header = f.readline().rstrip("\r\n").split("\t")
    except OSError as exc:
        raise DataError(f"cannot read {file}: {exc}") from exc
    return _no_labels(file, header)


def read_sst2(path: str | Path, split: str = "train") -> list[tuple[str, int]]:
    """GLUE SST-2 rows ``(sentence, label)`` from ``{split}.tsv`` (val: dev.tsv): a header line naming the
    columns ``sentence`` and ``label``, then one tab-separated row a line. ``path``: the directory or the file.
    A file without labels (GLUE's test.tsv) raises `DataError` saying so (see `sst2_unlabelled`)."""
    file = _split_file(path, "sst2", split)
    rows, columns = [], None
    for number, line in _lines(file):
        fields = line.split("\t")
        if columns is None:
            reason = _no_labels(file, fields)
            if reason is not None:
                raise DataError(f"{file}: {reason}; score the labelled dev split (dev.tsv) instead, or predict "
                                "its sentences")
            if "sentence" not in fields or "label" not in fields:
                raise DataError(f"{file}:1: the header {line!r:.80} must name the columns 'sentence' and 'label'")
            columns = (fields.index("sentence"), fields.index("label"), len(fields))
            continue
        if not line.strip():
            continue
        sentence_at, label_at, width = columns
        if len(fields) != width:
            raise DataError(f"{file}:{number}: expected {width} tab-separated fields, got {len(fields)}: "
                            f"{line!r:.120}")
        try:
            label = int(fields[label_at])
        except ValueError:
            raise DataError(f"{file}:{number}: label {fields[label_at]!r} is not an integer") from None
        rows.append((fields[sentence_at], label))
    if columns is None:
        raise DataError(f"{file} is empty; expected a header line 'sentence<TAB>label' and rows")
    logger.info("sst2 %s: %d sentences from %s", split, len(rows), file)
    return rows


def read_conll2003(path: str | Path, split: str = "train") -> list[Sentence]:
    """CoNLL-2003 sentences ``(tokens, NER tags)`` of ``split``: train (train.txt), val or valid (valid.txt,
    dev.txt or eng.testa), test (test.txt or eng.testb), any other name from ``{split}.txt``. One
    ``token POS chunk NER`` line per token, a blank line between sentences, ``-DOCSTART-`` lines skipped.
    Tags must be IOB ("O" or "B-"/"I-" + type). ``path``: the directory or the file."""
    file = _split_file(path, "conll2003", split)
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    for number, line in _lines(file):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if tokens:
                sentences.append((tokens, tags))
                tokens, tags = [], []
            continue
        if len(fields) != 4:
            raise DataError(f"{file}:{number}: expected 4 fields 'token POS chunk NER', got {len(fields)}: "
                            f"{line!r:.120}")
        tag = fields[3]
        if tag != "O" and not (tag[:2] in ("B-", "I-") and len(tag) > 2):
            raise DataError(f"{file}:{number}: NER tag {tag!r} is not IOB ('O', 'B-TYPE' or 'I-TYPE')")
        tokens.append(fields[0])
        tags.append(tag)
    if tokens:
        sentences.append((tokens, tags))
    logger.info("conll2003 %s: %d sentences, %d tokens from %s", split, len(sentences),
                sum(len(t) for t, _ in sentences), file)
    return sentences


def conll_label_list(sentences: Sequence[Sentence] | Iterable[Sequence[str]]) -> list[str]:
    """The tags that occur, sorted, with "O" first (ids for a token classifier).

    >>> conll_label_list([(["EU", "rejects"], ["B-ORG", "O"]), (["Peter"], ["B-PER"])])
    ['O', 'B-ORG', 'B-PER']
    """
    seen: set[str] = set()
    for item in sentences:
        tags = item[1] if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], list) else item
        seen.update(tags)
    return ["O", *sorted(seen - {"O"})]
