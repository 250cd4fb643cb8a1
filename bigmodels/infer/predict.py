"""Prediction over files for `bigmodels predict`: image files through the image-classification pipeline, an
unreadable file yielding its error in place of classes so that the others are still classified."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from torch import nn

from ..errors import DataError
from .pipelines import ImageClassificationPipeline, _resize_center_crop, image_preprocessing, prepare_image

__all__ = ["classify_images", "image_preprocessing", "prepare_image", "_resize_center_crop"]


def classify_images(
    model: nn.Module, paths: list[Path], *, top_k: int = 5, batch_size: int = 64
) -> Iterator[tuple[Path, list[tuple[str, float]] | DataError]]:
    """(path, [(class name, probability), ...] best first) per image; an unreadable file yields its error
    instead, and the others are still classified (the image-classification pipeline, batched).

    >>> dict(classify_images(model, [Path("cat.png")], top_k=2))  # doctest: +SKIP
    {PosixPath('cat.png'): [('cat', 0.91), ('dog', 0.05)]}
    """
    pipe = ImageClassificationPipeline(model, batch_size=batch_size, top_k=top_k)
    for start in range(0, len(paths), batch_size):
        chunk, images = [], []
        for path in paths[start : start + batch_size]:
            try:
                images.append(pipe.preprocess(path))
                chunk.append(path)
            except DataError as e:
                yield path, e
        for path, ranked in zip(chunk, pipe.run(images), strict=True):
            yield path, [(r["label"], r["score"]) for r in ranked]
