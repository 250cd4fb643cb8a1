"""Turning index batches into tensor batches, in process or through DataLoader workers."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

__all__ = ["fetch_batch", "iterate_batches", "to_device"]


def to_device(batch, device: torch.device | str, non_blocking: bool = True):
    """Move a tensor, or a dict / list / tuple of them (text batches), to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, dict):
        return {k: to_device(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, non_blocking) for v in batch)
    return batch


def fetch_batch(dataset: Dataset, indices: Sequence[int] | torch.Tensor):
    """One batch: vectorised ``dataset.get_batch`` when the dataset has it, else collate its items."""
    if hasattr(dataset, "get_batch"):
        return dataset.get_batch(torch.as_tensor(indices, dtype=torch.long))
    return default_collate([dataset[int(i)] for i in indices])


def iterate_batches(dataset: Dataset, batches: Iterable, num_workers: int = 0) -> Iterator:
    """Yield tensor batches for an iterable of index batches; workers decode in parallel when asked
    (the order of batches is kept, so a consumer can count them to resume exactly)."""
    if num_workers <= 0 or hasattr(dataset, "get_batch"):
        for idx in batches:
            yield fetch_batch(dataset, idx)
        return
    index_lists = [list(map(int, b)) for b in batches]
    yield from DataLoader(dataset, batch_sampler=index_lists, num_workers=num_workers)
