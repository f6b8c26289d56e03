"""Image transforms (torchvision v2) on ``uint8 [3,H,W]`` tensors, as the reference configures them.

They stop at ``uint8``: resizing, cropping and flipping run in the DataLoader workers, and the
conversion to the model's normalised float input runs on the device, at the front of each image
encoder (:class:`~fashion_vl.models.encoders.pixels.ImageNormalize`, which owns the mean/std below).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

# Mean/std every FashionViL dataset config uses (applied by the model: ImageNormalize).
FASHION_MEAN = (0.46777044, 0.44531429, 0.40661017)
FASHION_STD = (0.12221994, 0.12145835, 0.14380469)


def draft_size(transform: object) -> tuple[int, int] | None:
    """``(width, height)`` the transform resizes every image to before anything else, or ``None``.

    Only a :class:`v2.Compose` whose first op is a :class:`v2.Resize` to a fixed ``(h, w)`` qualifies
    (:func:`resize_crop`, the eval side of :func:`random_resized_crop`): such a transform downscales any
    larger image anyway, so decoding it at reduced size first (:func:`~fashion_vl.data.images
    .read_image`) only changes how the downscaling is done. Crops before the resize do not qualify.
    """
    ops = getattr(transform, "transforms", None)
    if not ops or not isinstance(ops[0], v2.Resize):
        return None
    size = ops[0].size
    if not isinstance(size, (list, tuple)) or len(size) != 2:
        return None  # a short-side resize keeps the aspect ratio: the needed size depends on the image
    return int(size[1]), int(size[0])


class ResizeCropFlip(v2.Compose):
    """``Resize((resize, resize))``, ``RandomCrop(size)``, then ``RandomHorizontalFlip()`` if ``hflip``:
    :func:`resize_crop`'s training pipeline (pre-training, retrieval), a :class:`v2.Compose` of those ops.

    :meth:`seeded` is what the datasets call (through
    :func:`~fashion_vl.data.datasets.seeded_transform`): the same pixels as this Compose run on torch's
    global generator seeded with ``seed`` (tests/test_transforms.py), with the same draws made from a
    private ``torch.Generator`` and torchvision's kernels called directly. Why by hand: v2's per-call
    machinery (input flattening and checks, parameter dicts, kernel dispatch for each of the three
    ops) and the fork of the global generator cost about 200 us a view on one core, three times the
    work itself and more than decoding a 256-px JPEG (``docs/performance.md``, "The rest of the way").
    """

    def __init__(self, size: int = 224, resize: int = 256, hflip: bool = True) -> None:
        if size > resize:
            raise ValueError(f"resize_crop: the crop size ({size}) is larger than the resize ({resize})")
        ops: list = [v2.Resize((resize, resize), antialias=True), v2.RandomCrop(size)]
        super().__init__(ops + ([v2.RandomHorizontalFlip()] if hflip else []))
        self.size, self.resize, self.hflip = size, resize, hflip

    def _offset(self, generator: torch.Generator) -> int:
        if self.resize == self.size:
            return 0
        return int(torch.randint(0, self.resize - self.size + 1, size=(), generator=generator))

    def seeded(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        """This transform of a ``[..., H, W]`` tensor with its randomness drawn from ``seed``."""
        generator = torch.Generator().manual_seed(seed)
        image = F.resize_image(image, [self.resize, self.resize], antialias=True)  # same size: as is
        # RandomCrop's draws (top, then left; none where the side is already the crop's), then the
        # flip's (RandomHorizontalFlip skips when rand >= p, with p = 0.5)
        top = self._offset(generator)
        left = self._offset(generator)
        image = F.crop_image(image, top, left, self.size, self.size)
        if self.hflip and torch.rand(1, generator=generator).item() < 0.5:
            image = F.horizontal_flip_image(image)
        return image


def resize_crop(
    train: bool,
    size: int = 224,
    resize: int = 256,
    hflip: bool = True,
) -> v2.Compose:
    """Pre-training/retrieval: Resize(resize, resize) then RandomCrop+HFlip (train,
    :class:`ResizeCropFlip`) or CenterCrop (eval)."""
    if train:
        return ResizeCropFlip(size, resize, hflip)
    return v2.Compose([v2.Resize((resize, resize), antialias=True), v2.CenterCrop(size)])


def random_resized_crop(
    train: bool,
    size: int = 224,
    scale: Sequence[float] = (0.8, 1.0),
    ratio: Sequence[float] = (0.75, 1.3),
    hflip: bool = True,
) -> v2.Compose:
    """FashionIQ / Polyvore: RandomResizedCrop+HFlip (train) or Resize(size, size) (eval)."""
    if train:
        ops: list = [v2.RandomResizedCrop(size, scale=tuple(scale), ratio=tuple(ratio), antialias=True)]
        ops += [v2.RandomHorizontalFlip()] if hflip else []
    else:
        ops = [v2.Resize((size, size), antialias=True)]
    return v2.Compose(ops)


# CLIP's normalisation (EVA-CLIP ViTs, UniFashion's image encoder; applied by the model).
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
) -> v2.Compose:
    """UniFashion (CLIP4Cir's ``targetpad``): pad to square past ``ratio``, bicubic resize of the short
    side to ``size``, centre crop; no augmentation, so ``train`` changes nothing."""
    ops = [
        PadToSquare(ratio),
        v2.Resize(size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.CenterCrop(size),
    ]
    return v2.Compose(ops)


_INTERPOLATIONS = {
    "bicubic": v2.InterpolationMode.BICUBIC,
    "bilinear": v2.InterpolationMode.BILINEAR,
    "nearest": v2.InterpolationMode.NEAREST,
}


def clip_preprocess(
    train: bool,
    size: int | Sequence[int] = 224,
    interpolation: str = "bicubic",
    resize_mode: str = "shortest",
    fill: int = 0,
    scale: Sequence[float] = (0.9, 1.0),
) -> v2.Compose:
    """A CLIP-family model's own preprocessing (open_clip's ``PreprocessCfg``), on ``uint8`` tensors.

    Evaluation by ``resize_mode``: ``shortest`` resizes the short side to ``size`` and centre-crops
    (CLIP); ``longest`` resizes the long side and pads to a centred square with ``fill``; ``squash``
    resizes to ``size x size`` ignoring the aspect ratio (SigLIP). Training replaces the resize by
    open_clip's ``RandomResizedCrop(size, scale)``; no flip (a text may say "left").
    """
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATIONS)}, not {interpolation!r}")
    mode = _INTERPOLATIONS[interpolation]
    square = (size, size) if isinstance(size, int) else tuple(size)
    if train:
        ops: list = [v2.RandomResizedCrop(square, scale=tuple(scale), interpolation=mode, antialias=True)]
    elif resize_mode == "shortest":
        ops = [v2.Resize(min(square), interpolation=mode, antialias=True), v2.CenterCrop(square)]
    elif resize_mode == "longest":
        # CenterCrop of a smaller image pads it with zeros: open_clip's default fill_color
        if fill != 0:
            raise ValueError(f"resize_mode=longest pads with 0 here, not fill={fill}")
        ops = [
            v2.Resize(size=None, max_size=max(square), interpolation=mode, antialias=True),
            v2.CenterCrop(square),
        ]
    elif resize_mode == "squash":
        ops = [v2.Resize(square, interpolation=mode, antialias=True)]
    else:
        raise ValueError(f"resize_mode must be shortest, longest or squash, not {resize_mode!r}")
    return v2.Compose(ops)
