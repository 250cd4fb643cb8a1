"""Batch augmentation in plain torch: every transform maps a whole (B, C, H, W) batch at once.

Randomness comes only from the `generator` argument (the global RNG when it is None), so a trainer
can checkpoint and restore it exactly. Each sample in a batch gets its own draw. Random numbers are
drawn on the generator's device (CPU for `torch.Generator()`) and then moved to the batch's device.

>>> tf = image_transforms([0.5], [0.25], train=True, crop_padding=2, hflip=True)
>>> x = tf(torch.zeros(8, 1, 28, 28, dtype=torch.uint8), generator=torch.Generator().manual_seed(0))
>>> x.shape, x.dtype
(torch.Size([8, 1, 28, 28]), torch.float32)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from bigmodels.errors import ConfigError, DataError

__all__ = [
    "BatchTransform",
    "Compose",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "Resize",
    "ToFloat",
    "dataset_mean_std",
    "image_transforms",
]


def _pair(size: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, int) and s > 0 for s in pair):
        raise ConfigError(f"{name}={size!r} must be a positive int or an (H, W) pair of positive ints")
    return pair


def _rand_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


class BatchTransform:
    """Base class: `transform(x, generator=None)` maps a batch (B, C, H, W) to a batch."""

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Compose(BatchTransform):
    """Apply transforms in order, passing the same generator to each."""

    def __init__(self, transforms: Sequence[BatchTransform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        for transform in self.transforms:
            x = transform(x, generator)
        return x


class ToFloat(BatchTransform):
    """uint8 0..255 -> float32 0..1; floating batches pass through unchanged."""

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if x.is_floating_point():
            return x
        return x.to(torch.float32).div_(255.0)


class RandomCrop(BatchTransform):
    """Zero-pad by `padding` on each side, then crop `size` at a random offset per sample.

    `size=None` crops back to the input size (the usual "pad and crop" augmentation).
    Works on any dtype; vectorised with one gather, no loop over the batch.
    """

    def __init__(self, size: int | Sequence[int] | None, padding: int = 0) -> None:
        if padding < 0:
            raise ConfigError(f"padding={padding!r} must be >= 0")
        self.size = None if size is None else _pair(size, "size")
        self.padding = padding

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        B, C, H, W = x.shape
        h, w = self.size or (H, W)
        p = self.padding
        if p:
            x = F.pad(x, (p, p, p, p))  # (B, C, H + 2p, W + 2p), zeros
        Hp, Wp = x.shape[-2:]
        if h > Hp or w > Wp:
            raise ConfigError(
                f"RandomCrop size {(h, w)} is larger than the padded image {(Hp, Wp)}; "
                "lower size or raise padding"
            )
        device = _rand_device(generator)
        top = torch.randint(0, Hp - h + 1, (B,), generator=generator, device=device).to(x.device)
        left = torch.randint(0, Wp - w + 1, (B,), generator=generator, device=device).to(x.device)
        rows = top[:, None] + torch.arange(h, device=x.device)  # (B, h)
        cols = left[:, None] + torch.arange(w, device=x.device)  # (B, w)
        batch = torch.arange(B, device=x.device)[:, None, None, None]
        chans = torch.arange(C, device=x.device)[None, :, None, None]
        return x[batch, chans, rows[:, None, :, None], cols[:, None, None, :]]  # (B, C, h, w)


class RandomResizedCrop(BatchTransform):
    """Crop a random area fraction (`scale`) and aspect ratio (`ratio`) per sample, resize it to `size`.

    The Inception crop (Szegedy et al. 2015, "Going deeper with convolutions", sec. 6), drawn as torchvision's
    `RandomResizedCrop` draws it: up to `attempts` tries of area ~ U(scale) x image area and log aspect ratio
    ~ U(log ratio); the first crop that fits wins, and a sample where none fits gets the largest central crop
    whose aspect ratio lies within `ratio`. The crop is resized with bilinear antialiasing (uint8 stays uint8,
    rounded). `size=None` keeps the input size. Every call draws the same amount of randomness from
    `generator`, whatever the outcome.

    >>> rrc = RandomResizedCrop(224)
    >>> rrc(torch.rand(8, 3, 256, 320), generator=torch.Generator().manual_seed(0)).shape
    torch.Size([8, 3, 224, 224])
    """

    def __init__(
        self,
        size: int | Sequence[int] | None = None,
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        attempts: int = 10,
    ) -> None:
        scale, ratio = tuple(float(s) for s in scale), tuple(float(r) for r in ratio)
        if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ConfigError(f"scale={scale!r} must be (min, max) area fractions with 0 < min <= max <= 1")
        if len(ratio) != 2 or not 0.0 < ratio[0] <= ratio[1]:
            raise ConfigError(f"ratio={ratio!r} must be (min, max) aspect ratios (w / h) with 0 < min <= max")
        if attempts < 1:
            raise ConfigError(f"attempts={attempts!r} must be >= 1")
        self.size = None if size is None else _pair(size, "size")
        self.scale = scale
        self.ratio = ratio
        self.attempts = attempts

    def params(self, batch: int, height: int, width: int, generator: torch.Generator | None = None) -> Tensor:
        """Crop boxes (B, 4) int64 rows (top, left, h, w), one per sample."""
        device = _rand_device(generator)
        shape = (batch, self.attempts)
        u_area, u_ratio = torch.rand((2, *shape), generator=generator, device=device, dtype=torch.float64).cpu()
        u_top, u_left = torch.rand((2, batch), generator=generator, device=device, dtype=torch.float64).cpu()
        area = height * width * (self.scale[0] + (self.scale[1] - self.scale[0]) * u_area)  # (B, attempts)
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(lo + (hi - lo) * u_ratio)  # w / h
        w = torch.sqrt(area * aspect).round().long()  # round half to even, as Python's round in torchvision
        h = torch.sqrt(area / aspect).round().long()
        fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)  # (B, attempts)
        first = fits.long().argmax(dim=1, keepdim=True)  # the first fitting attempt (0 when none fits)
        w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)  # (B,)
        top = (u_top * (height - h + 1)).floor().long().clamp_max(height - h)  # uniform over 0..height-h
        left = (u_left * (width - w + 1)).floor().long().clamp_max(width - w)
        # fallback: the whole image, narrowed to the nearest allowed aspect ratio, centred
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            fw, fh = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            fw, fh = round(height * self.ratio[1]), height
        else:
            fw, fh = width, height
        none_fit = ~fits.any(dim=1)
        h, w = torch.where(none_fit, fh, h), torch.where(none_fit, fw, w)
        top = torch.where(none_fit, (height - fh) // 2, top)
        left = torch.where(none_fit, (width - fw) // 2, left)
        return torch.stack([top, left, h, w], dim=1)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        B, C, H, W = x.shape
        size = self.size or (H, W)
        boxes = self.params(B, H, W, generator).tolist()
        out = torch.empty((B, C, *size), dtype=torch.float32 if not x.is_floating_point() else x.dtype,
                          device=x.device)
        for i, (top, left, h, w) in enumerate(boxes):  # crops differ in size: one resize per sample
            crop = x[i : i + 1, :, top : top + h, left : left + w]  # (1, C, h, w)
            if (h, w) != size:
                crop = F.interpolate(crop.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
            out[i] = crop[0]
        if x.is_floating_point():
            return out
        return out.round_().clamp_(0, 255).to(x.dtype)


class RandomHorizontalFlip(BatchTransform):
    """Mirror each sample left-right with probability `p`."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"p={p!r} must be a probability in [0, 1]")
        self.p = p

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        draw = torch.rand(x.shape[0], generator=generator, device=_rand_device(generator))
        flip = (draw < self.p).to(x.device)[:, None, None, None]  # (B, 1, 1, 1)
        return torch.where(flip, x.flip(-1), x)


class Normalize(BatchTransform):
    """(x - mean) / std per channel, on a float batch (put `ToFloat()` first)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != len(std) or not len(mean):
            raise ConfigError(f"mean={list(mean)} and std={list(std)} need one value per channel each")
        if min(std) <= 0:
            raise ConfigError(f"std={list(std)} must be positive")
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if not x.is_floating_point():
            raise ConfigError(f"Normalize got a {x.dtype} batch; put ToFloat() before Normalize()")
        if x.shape[1] != len(self.mean):
            raise DataError(
                f"Normalize has {len(self.mean)} channel stats but the batch has {x.shape[1]} channels; "
                "use mean/std computed for this data (dataset_mean_std)"
            )
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device)[None, :, None, None]
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device)[None, :, None, None]
        return (x - mean) / std


class Resize(BatchTransform):
    """Bilinear resize with antialiasing to `size` (int -> square). uint8 stays uint8 (rounded)."""

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = _pair(size, "size")

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if tuple(x.shape[-2:]) == self.size:
            return x
        y = F.interpolate(x.float(), size=self.size, mode="bilinear", antialias=True, align_corners=False)
        if x.is_floating_point():
            return y.to(x.dtype)
        return y.round_().clamp_(0, 255).to(x.dtype)


def image_transforms(
    mean: Sequence[float],
    std: Sequence[float],
    *,
    train: bool,
    crop_padding: int = 0,
    hflip: bool = False,
    img_size: int | None = None,
    random_resized_crop: bool = False,
    rrc_scale: Sequence[float] = (0.08, 1.0),
) -> Compose:
    """The standard pipeline: ToFloat, [Resize], then (train only) [pad-and-crop], [flip], Normalize.

    With `random_resized_crop` (train only), a `RandomResizedCrop` of area fraction `rrc_scale` to the
    output size takes the place of the resize (one resampling, not two); evaluation still resizes the
    whole image. It excludes `crop_padding`.

    >>> image_transforms([0.1307], [0.3081], train=True, crop_padding=2)
    """
    if random_resized_crop and crop_padding:
        raise ConfigError(
            f"random_resized_crop and crop_padding={crop_padding} are two crop augmentations; choose one"
        )
    steps: list[BatchTransform] = [ToFloat()]
    if train and random_resized_crop:
        steps.append(RandomResizedCrop(img_size, scale=rrc_scale))
    elif img_size is not None:
        steps.append(Resize(img_size))
    if train and crop_padding:
        steps.append(RandomCrop(img_size, padding=crop_padding))
    if train and hflip:
        steps.append(RandomHorizontalFlip())
    steps.append(Normalize(mean, std))
    return Compose(steps)


def dataset_mean_std(images: Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std of uint8 images (N, C, H, W), in 0..1 units.

    >>> dataset_mean_std(train.images)  # MNIST: ([0.1307], [0.3081])
    """
    if images.ndim != 4 or len(images) == 0:
        raise DataError(f"dataset_mean_std needs a non-empty (N, C, H, W) batch, got {tuple(images.shape)}")
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for start in range(0, len(images), chunk):  # float64 sums in chunks: exact enough, bounded memory
        x = images[start : start + chunk].to(torch.float64) / 255.0  # (b, C, H, W)
        total += x.sum(dim=(0, 2, 3))
        total_sq += x.square().sum(dim=(0, 2, 3))
    count = images.numel() / images.shape[1]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    return mean.tolist(), std.tolist()
