"""Reading images as the reference loader does: any of several extensions, converted to RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

# Tried in this order after the path as written; the reference strips the extension and tries these.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class ImageLoadError(RuntimeError):
    """An image is missing or cannot be decoded."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def resolve_image(image_dir: Path, name: str) -> Path:
    """The file for ``name`` under ``image_dir``: as written, else its stem with each known suffix."""
    path = image_dir / name
    if path.is_file():
        return path
    stem = path.with_suffix("") if path.suffix.lower() in IMAGE_SUFFIXES else path
    for suffix in IMAGE_SUFFIXES:
        candidate = stem.with_name(stem.name + suffix)
        if candidate.is_file():
            return candidate
    raise ImageLoadError(path, f"no such image (also tried {', '.join(IMAGE_SUFFIXES)})")


def read_image(path: Path) -> torch.Tensor:
    """Decode to a ``uint8 [3, H, W]`` RGB tensor.

    Pillow decodes every format the reference accepts (torchvision 0.29 deprecates its own decoders).
    ``load()`` forces the full decode here, so a truncated file fails now, not inside a transform.
    """
    try:
        with Image.open(path) as img:
            img.load()
            array = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError) as err:
        raise ImageLoadError(path, f"cannot decode ({type(err).__name__}: {str(err)[:120]})") from err
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def load_image(image_dir: Path, name: str) -> torch.Tensor:
    return read_image(resolve_image(image_dir, name))
