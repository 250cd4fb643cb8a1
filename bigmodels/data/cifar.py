"""CIFAR-10 and CIFAR-100 from the original "python version" files, unpickled safely.

The files (https://www.cs.toronto.edu/~kriz/cifar.html) are Python 2 pickles of dicts holding a uint8
``data`` array (N, 3072: 1024 red, 1024 green, 1024 blue values, each a row-major 32 x 32 plane), a list of
labels and a few byte strings. A pickle can run any importable callable while it loads, so the reader uses
an unpickler whose ``find_class`` allows only the three numpy names an array needs and refuses the rest:
a tampered file raises `DataError` instead of running code.

Accepted layouts: the files directly in the given directory, in its ``cifar-10-batches-py`` (CIFAR-100:
``cifar-100-python``) sub-folder, or the downloaded ``.tar.gz`` archive (the path itself, or inside the
directory), which is read in memory without extracting anything to disk.
"""

from __future__ import annotations

import io
import logging
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bigmodels.data.images import ImageTensorDataset
from bigmodels.errors import DataError

__all__ = ["load_cifar10", "load_cifar100", "read_cifar_pickle"]

logger = logging.getLogger(__name__)

_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
_SIDE = 32  # CIFAR images are 3 x 32 x 32
# What a damaged file or archive raises while being read or unpickled.
_READ_ERRORS = (
    OSError, EOFError, zlib.error, tarfile.TarError, pickle.UnpicklingError, ValueError, TypeError,
    AttributeError, IndexError, KeyError, MemoryError,
)


@dataclass(frozen=True)
class _Variant:
    name: str
    folder: str  # the folder the archive unpacks to
    archive: str  # the archive's download name
    train: tuple[str, ...]
    test: str
    meta: str
    label_key: str
    names_key: str


_CIFAR10 = _Variant(
    "CIFAR-10", "cifar-10-batches-py", "cifar-10-python.tar.gz",
    tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta", "labels", "label_names",
)
_CIFAR100 = _Variant(
    "CIFAR-100", "cifar-100-python", "cifar-100-python.tar.gz",
    ("train",), "test", "meta", "fine_labels", "fine_label_names",
)


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


# The only globals a pickled ndarray needs: `_reconstruct(ndarray, shape, dtype)` then `__setstate__`.
# The original files (numpy 1, Python 2) name numpy.core.multiarray; numpy 2 writes numpy._core.multiarray.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Loads dicts, lists, strings, numbers and numpy arrays; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        return allowed()


def read_cifar_pickle(data: bytes, source: str) -> dict[str, Any]:
    """Unpickle one CIFAR file's bytes (safely); keys come back as ``str``. ``source`` names it in errors.

    >>> batch = read_cifar_pickle(Path("cifar-10-batches-py/test_batch").read_bytes(), "test_batch")
    >>> batch["data"].shape
    (10000, 3072)
    """
    try:
        # encoding="bytes": Python 2 `str` objects (keys, names, the array buffers) load as bytes
        obj = _ArraysOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _READ_ERRORS as exc:
        if isinstance(exc, pickle.UnpicklingError) and str(exc).startswith("refused global "):
            raise DataError(
                f"{source} is not a plain CIFAR batch: it names {str(exc).removeprefix('refused global ')}, which "
                "a CIFAR batch never holds (loading a pickle's globals can run code), so it was refused; download "
                f"the original files from {_URL}"
            ) from None
        raise DataError(
            f"cannot read CIFAR file {source}: {exc!r}; the file is damaged, get it again from {_URL}"
        ) from exc
    if not isinstance(obj, dict):
        raise DataError(f"{source} holds a {type(obj).__name__}, not a CIFAR dict; pass the original files ({_URL})")
    return {k.decode("latin-1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


class _Source:
    """Where the files are: a directory, or a tar.gz archive read in memory."""

    def __init__(self, variant: _Variant, root: Path) -> None:
        self.variant = variant
        self.root = root
        self.archive: Path | None = None
        self.folder: Path | None = None
        self._members: dict[str, tarfile.TarInfo] = {}
        self._tar: tarfile.TarFile | None = None
        needed = (*variant.train, variant.test, variant.meta)
        if root.is_file():
            self.archive = root
        elif root.is_dir():
            for folder in (root, root / variant.folder):
                if all((folder / name).is_file() for name in needed):
                    self.folder = folder
                    break
            else:
                if (root / variant.archive).is_file():
                    self.archive = root / variant.archive
        if self.folder is None and self.archive is None:
            state = "does not exist" if not root.exists() else "lacks some of the files"
            raise DataError(
                f"{variant.name} path {root} {state}: expected {', '.join(needed)} there or in its "
                f"{variant.folder}/ sub-folder, or the {variant.archive} archive; download the python version "
                f"from {_URL} and pass its directory or the archive"
            )

    def __enter__(self) -> _Source:
        if self.archive is not None:
            try:
                self._tar = tarfile.open(self.archive, "r:*")
                members = self._tar.getmembers()
            except _READ_ERRORS as exc:
                raise DataError(
                    f"cannot read the archive {self.archive}: {exc!r}; it is damaged or not a tar(.gz) file, "
                    f"download {self.variant.archive} again from {_URL}"
                ) from exc
            self._members = {Path(m.name).name: m for m in members if m.isfile()}
        return self

    def __exit__(self, *exc) -> None:
        if self._tar is not None:
            self._tar.close()

    def read(self, name: str) -> dict[str, Any]:
        if self.folder is not None:
            path = self.folder / name
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise DataError(f"cannot read CIFAR file {path}: {exc}; check the path") from exc
            return read_cifar_pickle(data, str(path))
        assert self._tar is not None
        member = self._members.get(name)
        source = f"{self.archive}:{member.name if member else name}"
        if member is None:
            raise DataError(
                f"the archive {self.archive} has no {name}; it is not the {self.variant.name} python version "
                f"({self.variant.archive} from {_URL})"
            )
        try:
            data = self._tar.extractfile(member).read()
        except _READ_ERRORS as exc:
            raise DataError(f"cannot read {source}: {exc!r}; the archive is damaged, download it again") from exc
        return read_cifar_pickle(data, source)


def _field(batch: dict[str, Any], key: str, source: str) -> Any:
    if key not in batch:
        raise DataError(f"{source} has no {key!r} entry (it has {', '.join(batch)}); pass the original CIFAR files")
    return batch[key]


def _split(source: _Source, names: tuple[str, ...], class_names: list[str]) -> ImageTensorDataset:
    images, labels = [], []
    for name in names:
        batch = source.read(name)
        where = f"{source.folder or source.archive}/{name}"
        data = _field(batch, "data", where)
        batch_labels = _field(batch, source.variant.label_key, where)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
                or data.shape[1] != 3 * _SIDE * _SIDE:
            got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise DataError(f"{where}: 'data' is {got}; CIFAR batches hold uint8 (N, 3072) arrays")
        if len(batch_labels) != len(data):
            raise DataError(f"{where} holds {len(data)} images but {len(batch_labels)} labels; the file is damaged")
        images.append(torch.from_numpy(data.reshape(-1, 3, _SIDE, _SIDE).copy()))  # (n, 3, 32, 32)
        labels.append(torch.as_tensor(np.asarray(batch_labels, dtype=np.int64)))
    return ImageTensorDataset(torch.cat(images), torch.cat(labels), class_names)


def _load(variant: _Variant, root: str | Path) -> tuple[ImageTensorDataset, ImageTensorDataset]:
    with _Source(variant, Path(root)) as source:
        meta = source.read(variant.meta)
        names = _field(meta, variant.names_key, f"{source.folder or source.archive}/{variant.meta}")
        class_names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]
        train = _split(source, variant.train, class_names)
        test = _split(source, (variant.test,), class_names)
    logger.info("loaded %s from %s: %d train, %d test, %d classes",
                variant.name, root, len(train), len(test), len(class_names))
    return train, test


def load_cifar10(root: str | Path) -> tuple[ImageTensorDataset, ImageTensorDataset]:
    """(train 50,000, test 10,000) CIFAR-10 datasets, uint8 (N, 3, 32, 32), from the python-version files.

    >>> train, test = load_cifar10("data/cifar-10-python.tar.gz")  # or the unpacked directory
    >>> train.images.shape, train.class_names[:2]
    (torch.Size([50000, 3, 32, 32]), ['airplane', 'automobile'])
    """
    return _load(_CIFAR10, root)


def load_cifar100(root: str | Path) -> tuple[ImageTensorDataset, ImageTensorDataset]:
    """(train 50,000, test 10,000) CIFAR-100 datasets with the 100 fine labels, uint8 (N, 3, 32, 32).

    >>> train, test = load_cifar100("data/cifar-100-python")
    >>> len(train.class_names)
    100
    """
    return _load(_CIFAR100, root)
