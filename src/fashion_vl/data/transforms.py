"""Image transforms (torchvision v2) on ``uint8 [3,H,W]`` tensors, as the reference configures them."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

# Mean/std every FashionViL dataset config uses.
FASHION_MEAN = (0.46777044, 0.44531429, 0.40661017)
FASHION_STD = (0.12221994, 0.12145835, 0.14380469)


def _to_float(mean: Sequence[float], std: Sequence[float]) -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


def resize_crop(
    train: bool,
    size: int = 224,
    resize: int = 256,
    hflip: bool = True,
    mean: Sequence[float] = FASHION_MEAN,
    std: Sequence[float] = FASHION_STD,
) -> v2.Compose:
    """Pre-training/retrieval: Resize(resize, resize) then RandomCrop+HFlip (train) or CenterCrop (eval)."""
    ops: list = [v2.Resize((resize, resize), antialias=True)]
    if train:
        ops += [v2.RandomCrop(size)] + ([v2.RandomHorizontalFlip()] if hflip else [])
    else:
        ops.append(v2.CenterCrop(size))
    return v2.Compose(ops + _to_float(mean, std))


def random_resized_crop(
    train: bool,
    size: int = 224,
    scale: Sequence[float] = (0.8, 1.0),
    ratio: Sequence[float] = (0.75, 1.3),
    hflip: bool = True,
    mean: Sequence[float] = FASHION_MEAN,
    std: Sequence[float] = FASHION_STD,
) -> v2.Compose:
    """FashionIQ / Polyvore: RandomResizedCrop+HFlip (train) or Resize(size, size) (eval)."""
    if train:
        ops: list = [v2.RandomResizedCrop(size, scale=tuple(scale), ratio=tuple(ratio), antialias=True)]
        ops += [v2.RandomHorizontalFlip()] if hflip else []
    else:
        ops = [v2.Resize((size, size), antialias=True)]
    return v2.Compose(ops + _to_float(mean, std))
