"""In-memory image datasets: MNIST idx files, scikit-learn digits, and seeded train/val splits.

Images are kept as uint8 (N, C, H, W) tensors; conversion to float and augmentation happen on whole
batches later (see `bigmodels.data.transforms`). Datasets that hold tensors expose
`get_batch(indices)` so a trainer can fetch a batch with one indexing op instead of collating items.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from bigmodels.data.folder import ImageFolder, read_image
from bigmodels.errors import ConfigError, DataError

__all__ = [
    "BatchSubset",
    "ImageFolder",
    "ImageTensorDataset",
    "Subset",
    "load_digits_data",
    "load_mnist",
    "read_idx",
    "read_image",
    "split_dataset",
]

logger = logging.getLogger(__name__)

# idx type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_DIGIT_CLASSES = [str(d) for d in range(10)]


class ImageTensorDataset(Dataset):
    """Images and labels held as tensors; items are (uint8 (C, H, W), int label).

    >>> images, labels = torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 0, 1])
    >>> ds = ImageTensorDataset(images, labels, ["a", "b"])
    >>> ds.get_batch(torch.tensor([0, 3]))[0].shape
    torch.Size([2, 1, 8, 8])
    """

    def __init__(self, images: Tensor, labels: Tensor, class_names: Sequence[str]) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise DataError(
                f"ImageTensorDataset needs uint8 images of shape (N, C, H, W), got {images.dtype} "
                f"{tuple(images.shape)}; convert with images.to(torch.uint8) and add a channel dim if missing"
            )
        if labels.ndim != 1 or len(labels) != len(images):
            raise DataError(
                f"ImageTensorDataset needs labels of shape (N,) = ({len(images)},), "
                f"got {tuple(labels.shape)}; pass one integer label per image"
            )
        labels = labels.to(torch.int64)
        if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
            raise DataError(
                f"labels span {int(labels.min())}..{int(labels.max())} but there are {len(class_names)} "
                "class_names; labels must lie in 0..len(class_names)-1"
            )
        self.images = images  # (N, C, H, W) uint8
        self.labels = labels  # (N,) int64
        self.class_names = list(class_names)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])

    def get_batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """(images uint8 (B, C, H, W), labels int64 (B,)) for a LongTensor of indices."""
        return self.images[indices], self.labels[indices]

    def subset(self, indices: Tensor) -> ImageTensorDataset:
        """A new dataset holding only `indices` (a copy, so it stays fast to index)."""
        return ImageTensorDataset(self.images[indices], self.labels[indices], self.class_names)


class Subset(Dataset):
    """A view of `base` restricted to `indices` (LongTensor)."""

    def __init__(self, base: Dataset, indices: Tensor) -> None:
        self.base = base
        self.indices = indices.to(torch.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.base[int(self.indices[index])]


class BatchSubset(Subset):
    """A `Subset` of a dataset that has `get_batch`, forwarding it with remapped indices."""

    def get_batch(self, indices: Tensor):
        return self.base.get_batch(self.indices[indices])


def split_dataset(ds: Dataset, val_fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Deterministic seeded split into (train, val); `round(len * val_fraction)` items go to val.

    Datasets with a `subset(indices)` method (ImageTensorDataset) are split into new datasets of the
    same type; others into `Subset` views, which keep `get_batch` when the base has it.

    >>> train, val = split_dataset(ds, 0.1, seed=0)
    """
    if not 0.0 < val_fraction < 1.0:  # 0 would carve an empty split (DataConfig allows 0 for data with its own)
        raise ConfigError(f"val_fraction={val_fraction!r} must be in (0, 1), e.g. 0.1: it is the share of the items "
                          "split off to validate on, and the validation split cannot be empty")
    n = len(ds)
    n_val = round(n * val_fraction)
    if n_val == 0 or n_val == n:
        raise ConfigError(
            f"val_fraction={val_fraction} of {n} items leaves an empty {'val' if n_val == 0 else 'train'} "
            "split; choose a val_fraction that keeps at least one item on each side"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    train_idx, val_idx = order[n_val:].sort().values, order[:n_val].sort().values
    if hasattr(ds, "subset"):
        return ds.subset(train_idx), ds.subset(val_idx)
    wrap = BatchSubset if hasattr(ds, "get_batch") else Subset
    return wrap(ds, train_idx), wrap(ds, val_idx)


def _read_bytes(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"  # detect gzip by its magic, not the file name
        if gzipped:
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"idx file {path} does not exist; check the path") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read idx file {path}: {exc}; the file is damaged, get it again") from exc


def read_idx(path: str | Path) -> Tensor:
    """Read an idx file (raw or gzipped): uint8 images (N, 28, 28) for MNIST, int64 labels for 1-D files.

    Multi-dimensional arrays keep the file's dtype; 1-D arrays (labels) become int64.

    >>> labels = read_idx("mnist/t10k-labels-idx1-ubyte.gz")  # (10000,) int64
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES or data[3] == 0:
        raise DataError(
            f"{path} is not an idx file: bad magic number {data[:4].hex() or '(empty)'}; expected "
            "00 00 <type> <ndim> as in the original MNIST files"
        )
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is truncated: the header needs {header} bytes but the file has {len(data)}")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "longer than its header says"
        raise DataError(
            f"{path} is {problem}: dims {dims} need {expected} bytes but the file has {len(data)}; "
            "the file is damaged, download it again"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    out = torch.from_numpy(array.astype(dtype.newbyteorder("=")))  # native byte order, writable copy
    return out.to(torch.int64) if ndim == 1 else out


def _find_mnist_files(root: Path) -> dict[str, Path]:
    # Accept the files directly in root or in torchvision's download layout root/MNIST/raw.
    for folder in (root, root / "MNIST" / "raw"):
        found = {}
        for key, stem in _MNIST_FILES.items():
            candidates = [folder / stem, folder / f"{stem}.gz"]
            found[key] = next((p for p in candidates if p.is_file()), None)
        if all(found.values()):
            return found
    names = ", ".join(f"{stem}(.gz)" for stem in _MNIST_FILES.values())
    state = "does not exist" if not root.is_dir() else "lacks some of the files"
    raise DataError(
        f"MNIST directory {root} {state}: expected the four idx files {names} (gzipped or raw); "
        "get them from http://yann.lecun.com/exdb/mnist/ or a mirror and pass their directory"
    )


def _mnist_split(images_path: Path, labels_path: Path) -> ImageTensorDataset:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != torch.uint8 or images.ndim != 3 or len(images) != len(labels):
        raise DataError(
            f"{images_path} holds {images.dtype} {tuple(images.shape)} and {labels_path} holds "
            f"{len(labels)} labels; MNIST needs uint8 (N, H, W) images with one label each"
        )
    return ImageTensorDataset(images.unsqueeze(1), labels, _DIGIT_CLASSES)  # (N, 1, 28, 28)


def load_mnist(root: str | Path) -> tuple[ImageTensorDataset, ImageTensorDataset]:
    """(train 60,000, test 10,000) MNIST datasets from the original idx files in `root`.

    >>> train, test = load_mnist("../shared/data/mnist")
    >>> train.images.shape
    torch.Size([60000, 1, 28, 28])
    """
    files = _find_mnist_files(Path(root))
    train = _mnist_split(files["train_images"], files["train_labels"])
    test = _mnist_split(files["test_images"], files["test_labels"])
    logger.info("loaded MNIST from %s: %d train, %d test", root, len(train), len(test))
    return train, test


def load_digits_data(
    test_fraction: float = 0.2, seed: int = 0
) -> tuple[ImageTensorDataset, ImageTensorDataset]:
    """(train, test) from scikit-learn's embedded 8x8 digits (1,797 images), stratified and seeded.

    Pixel values 0..16 are scaled to uint8 0..255 (`round(v * 255 / 16)`).

    >>> train, test = load_digits_data()
    >>> train.images.shape, len(test)
    (torch.Size([1437, 1, 8, 8]), 360)
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction={test_fraction!r} must lie strictly between 0 and 1, e.g. 0.2")
    digits = load_digits()
    images = torch.from_numpy(np.round(digits.images * 255.0 / 16.0).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(digits.target).to(torch.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=digits.target
    )
    full = ImageTensorDataset(images, labels, _DIGIT_CLASSES)  # (1797, 1, 8, 8)
    return full.subset(torch.from_numpy(np.sort(train_idx))), full.subset(torch.from_numpy(np.sort(test_idx)))
