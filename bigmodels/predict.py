"""Inference helpers for `bigmodels predict`: classify image files, continue a text prompt."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from .data.folder import read_image
from .data.tokenizers import load_tokenizer
from .data.transforms import image_transforms
from .errors import CheckpointError, DataError

__all__ = ["classify_images", "continue_text"]


@torch.inference_mode()
def classify_images(
    model: nn.Module, paths: list[Path], *, top_k: int = 5, batch_size: int = 64
) -> Iterator[tuple[Path, list[tuple[str, float]] | DataError]]:
    """(path, [(class name, probability), ...] best first) per image; an unreadable file yields its error."""
    meta = getattr(model, "meta", {}) or {}
    cfg = model.config
    channels, size = cfg.in_chans, cfg.img_size
    names = meta.get("class_names") or [str(i) for i in range(cfg.num_classes)]
    transform = image_transforms(meta.get("mean", [0.5] * channels), meta.get("std", [0.5] * channels), train=False)
    model.eval()
    for start in range(0, len(paths), batch_size):
        chunk, images = [], []
        for path in paths[start : start + batch_size]:
            try:
                images.append(read_image(path, channels=channels, size=size))
                chunk.append(path)
            except DataError as e:
                yield path, e
        if not images:
            continue
        probs = model(transform(torch.stack(images))).float().softmax(-1)  # (B, C)
        top = probs.topk(min(top_k, probs.size(-1)), dim=-1)
        for path, p, idx in zip(chunk, top.values.tolist(), top.indices.tolist(), strict=True):
            yield path, [(names[i], v) for i, v in zip(idx, p, strict=True)]


def continue_text(
    model: nn.Module, directory: Path, prompt: str, *, max_new_tokens: int = 200, temperature: float = 0.8,
    top_k: int | None = None, seed: int = 0,
) -> str:
    """The prompt followed by ``max_new_tokens`` sampled tokens (characters for a char-level model)."""
    tok_path = Path(directory) / "tokenizer.json"
    if not tok_path.is_file():
        raise CheckpointError(f"{tok_path} is missing: this language model was saved without its tokenizer")
    tokenizer = load_tokenizer(tok_path)
    if not prompt:
        raise DataError("the prompt is empty; give some text to continue, e.g. 'To be'")
    encoded = tokenizer.encode(prompt, unknown="error")  # a char model: ids; a BPE model: an Encoding
    ids = torch.tensor([getattr(encoded, "ids", encoded)], dtype=torch.long)
    model.eval()
    out = model.generate(ids, max_new_tokens, temperature=temperature, top_k=top_k,
                         generator=torch.Generator().manual_seed(seed))
    return tokenizer.decode(out[0].tolist())
