"""Data: datasets, batch transforms and samplers. Knows no model, trainer or CLI.

>>> from bigmodels.data import build_data
>>> data = build_data("digits")
>>> images, labels = data.train.get_batch(torch.arange(32))  # uint8 (32, 1, 8, 8), int64 (32,)
>>> x = data.train_transform(images, generator=torch.Generator().manual_seed(0))  # float (32, 1, 8, 8)
"""

from bigmodels.data.bundle import DATASETS, DataBundle, build_data
from bigmodels.data.cifar import load_cifar10, load_cifar100
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
from bigmodels.data.nlp import conll_label_list, read_conll2003, read_sst2, read_stsb
from bigmodels.data.nlp_datasets import (
    IGNORE_INDEX,
    MaskedLMDataset,
    TextClassificationDataset,
    TokenClassificationDataset,
    split_documents,
)
from bigmodels.data.parallel import ParallelDataset, read_parallel, train_joint_bpe
from bigmodels.data.sampler import ResumableSampler
from bigmodels.data.text import TokenWindows, pydoc_corpus, read_text, split_text
from bigmodels.data.tokenizers import CharTokenizer, Tokenizer, load_tokenizer
from bigmodels.data.transforms import (
    BatchTransform,
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    ToFloat,
    dataset_mean_std,
    image_transforms,
)

__all__ = [
    "DATASETS",
    "IGNORE_INDEX",
    "BatchTransform",
    "CharTokenizer",
    "Compose",
    "DataBundle",
    "ImageFolder",
    "ImageTensorDataset",
    "MaskedLMDataset",
    "Normalize",
    "ParallelDataset",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "Resize",
    "ResumableSampler",
    "Subset",
    "TextClassificationDataset",
    "TokenClassificationDataset",
    "ToFloat",
    "Tokenizer",
    "TokenWindows",
    "build_data",
    "conll_label_list",
    "dataset_mean_std",
    "image_transforms",
    "load_cifar10",
    "load_cifar100",
    "load_digits_data",
    "load_mnist",
    "load_tokenizer",
    "pydoc_corpus",
    "read_conll2003",
    "read_idx",
    "read_image",
    "read_parallel",
    "read_sst2",
    "read_stsb",
    "read_text",
    "split_dataset",
    "split_documents",
    "split_text",
    "train_joint_bpe",
]
