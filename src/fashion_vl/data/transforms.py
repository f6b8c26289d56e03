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


# CLIP's normalisation (EVA-CLIP ViTs, UniFashion's image encoder).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class PadToSquare(torch.nn.Module):
    """Zero-pad an image ``[..., H, W]`` to a centred square when its aspect ratio exceeds ``ratio``
    (CLIP4Cir's "targetpad", which UniFashion uses with ratio 1.25); nearly square images pass as they are."""

    def __init__(self, ratio: float = 1.25) -> None:
        super().__init__()
        self.ratio = ratio

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        if max(h, w) / min(h, w) < self.ratio:
            return image
        side = max(h, w)
        left, top = (side - w) // 2, (side - h) // 2
        return v2.functional.pad(image, [left, top, side - w - left, side - h - top], fill=0)


def target_pad(
    train: bool,
    size: int = 224,
    ratio: float = 1.25,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> v2.Compose:
    """UniFashion (CLIP4Cir's ``targetpad``): pad to square past ``ratio``, bicubic resize of the short
    side to ``size``, centre crop; no augmentation, so ``train`` changes nothing."""
    ops = [
        PadToSquare(ratio),
        v2.Resize(size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.CenterCrop(size),
    ]
    return v2.Compose(ops + _to_float(mean, std))
