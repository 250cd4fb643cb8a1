"""`ImageFolder`: a class per sub-folder, images decoded with PIL on access, robust to damaged files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from bigmodels.errors import ConfigError, DataError

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder", "read_image"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# What PIL raises for an unreadable, truncated or corrupt file (UnidentifiedImageError is an OSError).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_CHANNEL_PROBE = 32  # with img_size set, how many headers decide channels=None


def read_image(path: str | Path, channels: int = 3, size: int | tuple[int, int] | None = None) -> Tensor:
    """Decode one image file to uint8 (C, H, W): L for channels=1, RGB for 3; `size` resizes (bilinear).

    Raises `DataError` naming the path when the file is missing, truncated or not an image.

    >>> read_image("cat.jpg", channels=3, size=224).shape
    torch.Size([3, 224, 224])
    """
    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")  # decodes: truncation raises here
    except _DECODE_ERRORS as exc:
        raise DataError(f"cannot read image {path}: {exc}; replace or remove the file") from exc
    if size is not None:
        height, width = (size, size) if isinstance(size, int) else size
        if im.size != (width, height):
            im = im.resize((width, height), Image.Resampling.BILINEAR)
    array = torch.from_numpy(np.array(im, dtype=np.uint8))  # (H, W) or (H, W, 3)
    return array.unsqueeze(0) if array.ndim == 2 else array.permute(2, 0, 1).contiguous()  # (C, H, W)


class ImageFolder(Dataset):
    """Images under `root/<class_name>/...`; items are (uint8 (C, H, W), int label).

    Class names are the sorted sub-folder names. Files are found recursively by extension
    (`IMAGE_EXTENSIONS`, case-insensitive; hidden files are skipped). Each image is converted to L
    (`channels=1`) or RGB (`channels=3`; `None` picks 1 when the first files are all grayscale) and, with
    `img_size`, resized to img_size x img_size (bilinear, aspect ratio not kept). Without `img_size`
    all images must share one size.

    A file that cannot be decoded does not stop an epoch: it is logged once, added to `bad_files`,
    and the next readable item is returned in its place. More than `max_bad_fraction` of the files
    bad raises `DataError`. Call `check()` to find every bad file up front. (With DataLoader workers,
    each worker keeps its own `bad_files`.)

    >>> ds = ImageFolder("pets/train", img_size=64, channels=3)
    >>> image, label = ds[0]  # uint8 (3, 64, 64), int
    """

    def __init__(
        self,
        root: str | Path,
        img_size: int | None = None,
        channels: int | None = 3,
        *,
        max_bad_fraction: float = 0.1,
    ) -> None:
        if channels not in (1, 3, None):
            raise ConfigError(f"channels={channels!r} is not supported; use 1 (grayscale), 3 (RGB) or None")
        if img_size is not None and (not isinstance(img_size, int) or img_size < 1):
            raise ConfigError(f"img_size={img_size!r} must be a positive int (or None to keep the file size)")
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ConfigError(f"max_bad_fraction={max_bad_fraction!r} must lie in [0, 1], e.g. 0.1")
        self.root = Path(root)
        self.img_size = img_size
        self.max_bad_fraction = max_bad_fraction
        self.bad_files: list[Path] = []
        self._bad: set[Path] = set()
        self.class_names, self.samples = self._scan(self.root)
        self.labels = torch.tensor([label for _, label in self.samples], dtype=torch.int64)  # (N,)
        # Headers (cheap, no decoding): every file when sizes must agree, else a few to pick channels.
        probe = len(self.samples) if img_size is None else (_CHANNEL_PROBE if channels is None else 0)
        sizes, modes = self._read_headers(probe)
        self.channels = channels if channels is not None else (1 if modes <= _GRAY_MODES else 3)
        self.image_size = (img_size, img_size) if img_size is not None else self._common_size(sizes)
        self._enforce_bad_limit()

    @staticmethod
    def _scan(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
        if not root.is_dir():
            raise DataError(f"image folder {root} does not exist or is not a directory; check the path")
        class_dirs = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
                            key=lambda d: d.name)
        if not class_dirs:
            raise DataError(
                f"image folder {root} has no class sub-folders; lay images out as {root}/<class_name>/<image>"
            )
        samples = []
        for label, class_dir in enumerate(class_dirs):
            files = sorted(
                p for p in class_dir.rglob("*")
                if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
            )
            if not files:
                logger.warning("class folder %s has no image files; its class gets no examples", class_dir)
            samples += [(p, label) for p in files]
        if not samples:
            raise DataError(
                f"image folder {root} has class folders but no image files with extensions "
                f"{', '.join(IMAGE_EXTENSIONS)}; add images or point to another folder"
            )
        return [d.name for d in class_dirs], samples

    def _read_headers(self, count: int) -> tuple[dict[tuple[int, int], Path], set[str]]:
        """Open the first `count` headers: {size (W, H): first path with it} and the modes seen."""
        sizes: dict[tuple[int, int], Path] = {}
        modes: set[str] = set()
        for path, _ in self.samples[:count]:
            try:
                with Image.open(path) as im:
                    sizes.setdefault(im.size, path)
                    modes.add(im.mode)
            except _DECODE_ERRORS as exc:
                self._mark_bad(path, exc)
        return sizes, modes

    def _common_size(self, sizes: dict[tuple[int, int], Path]) -> tuple[int, int]:
        if len(sizes) > 1:
            (size_a, path_a), (size_b, path_b) = list(sizes.items())[:2]
            raise DataError(
                f"images in {self.root} differ in size: {path_a} is {size_a[0]}x{size_a[1]} but {path_b} is "
                f"{size_b[0]}x{size_b[1]}; pass img_size=N to resize every image to N x N"
            )
        if not sizes:
            self._enforce_bad_limit()
            raise DataError(f"no readable image in {self.root}; every file failed to open")
        width, height = next(iter(sizes))
        return height, width

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        n = len(self.samples)
        index = int(index)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for ImageFolder of {n} images")
        for step in range(n):  # a bad file is replaced by the next readable one
            path, label = self.samples[(index + step) % n]
            if path in self._bad:
                continue
            try:
                return self._load(path), label
            except DataError as exc:
                self._mark_bad(path, exc)
                self._enforce_bad_limit()
        raise DataError(f"no readable image in {self.root}; every file failed to decode")

    def _load(self, path: Path) -> Tensor:
        image = read_image(path, self.channels, self.img_size)  # (C, H, W)
        if tuple(image.shape[1:]) != self.image_size:  # the file changed since the size scan
            raise DataError(f"{path} is {tuple(image.shape[1:])}, the folder's images {self.image_size}")
        return image

    def _mark_bad(self, path: Path, exc: BaseException) -> None:
        if path not in self._bad:
            logger.warning("skipping unreadable image %s: %s", path, exc.__cause__ or exc)
            self._bad.add(path)
            self.bad_files.append(path)

    def _enforce_bad_limit(self) -> None:
        if len(self.bad_files) > self.max_bad_fraction * len(self.samples):
            shown = ", ".join(str(p) for p in self.bad_files[:5])
            raise DataError(
                f"{len(self.bad_files)} of {len(self.samples)} images in {self.root} are unreadable "
                f"(more than max_bad_fraction={self.max_bad_fraction}), e.g. {shown}; remove or re-encode "
                "them (ImageFolder.check() lists them all) or raise max_bad_fraction"
            )

    def check(self) -> list[Path]:
        """Decode every file; return all bad paths (also recorded in `bad_files`). Never raises for them."""
        for path, _ in self.samples:
            if path not in self._bad:
                try:
                    self._load(path)
                except DataError as exc:
                    self._mark_bad(path, exc)
        return list(self.bad_files)
