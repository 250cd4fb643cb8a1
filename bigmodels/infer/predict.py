"""Inference helpers for `bigmodels predict`: classify image files, continue a text prompt."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.folder import read_image
from ..data.tokenizers import load_tokenizer
from ..data.transforms import image_transforms
from ..errors import CheckpointError, DataError

__all__ = ["classify_images", "continue_text"]


def _resize_center_crop(image: torch.Tensor, resize: int, crop: int) -> torch.Tensor:
    """ImageNet evaluation: the shorter side resized to ``resize`` (bilinear, antialiased), then a centred
    ``crop`` x ``crop`` square, as torchvision's weights expect. uint8 (C, H, W) in and out."""
    h, w = image.shape[-2:]
    scale = resize / min(h, w)
    size = (max(crop, round(h * scale)), max(crop, round(w * scale)))
    x = F.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = (size[0] - crop) // 2, (size[1] - crop) // 2
    return x[:, top : top + crop, left : left + crop].round_().clamp_(0, 255).to(torch.uint8)


@torch.inference_mode()
def classify_images(
    model: nn.Module, paths: list[Path], *, top_k: int = 5, batch_size: int = 64
) -> Iterator[tuple[Path, list[tuple[str, float]] | DataError]]:
    """(path, [(class name, probability), ...] best first) per image; an unreadable file yields its error.

    Images are prepared as the model's data was: its recorded size and normalisation (``model.meta``);
    for torchvision weights, ImageNet's resize-then-centre-crop.
    """
    meta = getattr(model, "meta", {}) or {}
    cfg = model.config
    channels = getattr(cfg, "in_chans", 3)
    size = meta.get("img_size") or getattr(cfg, "img_size", None) or 224
    resize = meta.get("resize_size")
    names = meta.get("class_names") or [f"class {i}" for i in range(cfg.num_classes)]
    transform = image_transforms(meta.get("mean", [0.5] * channels), meta.get("std", [0.5] * channels), train=False)
    model.eval()
    for start in range(0, len(paths), batch_size):
        chunk, images = [], []
        for path in paths[start : start + batch_size]:
            try:
                if resize:
                    images.append(_resize_center_crop(read_image(path, channels=channels), resize, size))
                else:
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
