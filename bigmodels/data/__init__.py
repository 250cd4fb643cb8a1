"""Data: datasets, batch transforms and samplers. Knows no model, trainer or CLI.

>>> from bigmodels.data import build_data
>>> data = build_data("digits")
>>> images, labels = data.train.get_batch(torch.arange(32))  # uint8 (32, 1, 8, 8), int64 (32,)
>>> x = data.train_transform(images, generator=torch.Generator().manual_seed(0))  # float (32, 1, 8, 8)
"""

from bigmodels.data.bundle import DATASETS, DataBundle, build_data
from bigmodels.data.images import (
    ImageFolder,
    ImageTensorDataset,
    Subset,
    load_digits_data,
    load_mnist,
    read_idx,
    read_image,
    split_dataset,
)
from bigmodels.data.sampler import ResumableSampler
from bigmodels.data.text import CharTokenizer, TokenWindows, pydoc_corpus, read_text, split_text
from bigmodels.data.transforms import (
    BatchTransform,
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    Resize,
    ToFloat,
    dataset_mean_std,
    image_transforms,
)

__all__ = [
    "DATASETS",
    "BatchTransform",
    "CharTokenizer",
    "Compose",
    "DataBundle",
    "ImageFolder",
    "ImageTensorDataset",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "Resize",
    "ResumableSampler",
    "Subset",
    "ToFloat",
    "TokenWindows",
    "build_data",
    "dataset_mean_std",
    "image_transforms",
    "load_digits_data",
    "load_mnist",
    "pydoc_corpus",
    "read_idx",
    "read_image",
    "read_text",
    "split_dataset",
    "split_text",
]
