"""The one place where the data's ``uint8`` pixels become a model's float input, on the model's device.

DataLoader workers stop at ``uint8 [B, 3, H, W]`` (decode, resize, crop, flip): a quarter of float32's
bytes to stack, pin and copy. Each image encoder starts with :class:`ImageNormalize`, so the
conversion runs where the encoder runs (and is compiled with it). Float input passes through
unchanged: converted checkpoints' golden tests, benchmarks on random tensors and any caller that
normalised already keep working.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fashion_vl.data.transforms import CLIP_MEAN, CLIP_STD, FASHION_MEAN, FASHION_STD

__all__ = ["CLIP_MEAN", "CLIP_STD", "FASHION_MEAN", "FASHION_STD", "ImageNormalize", "to_signed", "to_unit"]


def _per_channel(values: Sequence[float], what: str) -> tuple[float, float, float]:
    floats = tuple(float(v) for v in values)
    if len(floats) not in (1, 3):
        raise ValueError(f"{what} must have 1 or 3 values, not {len(floats)}")
    return floats * (3 // len(floats))


class ImageNormalize(nn.Module):
    """``uint8 [B, 3, H, W]`` in [0, 255] -> float32 ``(x / 255 - mean) / std``; float input unchanged.

    Computed as one multiply-add, ``x * (1 / (255 std)) - mean / std``, in float32 whatever the module's
    dtype (autocast then casts for the encoder). Both constants are non-persistent buffers, so they
    follow ``.to(device)`` and leave state dicts (and every checkpoint's keys) as they were.
    """

    def __init__(self, mean: Sequence[float] = FASHION_MEAN, std: Sequence[float] = FASHION_STD) -> None:
        super().__init__()
        self.mean, self.std = _per_channel(mean, "mean"), _per_channel(std, "std")
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, not {list(std)}")
        # plain Python until here, so that a module built on the meta device (shape checks) works too
        mean_t = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std_t = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std_t), persistent=False)
        self.register_buffer("shift", -mean_t / std_t, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            return images
        return torch.addcmul(self.shift.float(), images.float(), self.scale.float())

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"


def to_signed(images: torch.Tensor) -> torch.Tensor:
    """``uint8`` pixels -> float32 in ``[-1, 1]`` (the VAE's range, try-on data's); float input unchanged."""
    if images.dtype != torch.uint8:
        return images
    return images.float().div(127.5).sub(1.0)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """``uint8`` pixels -> float32 in ``[0, 1]``; float input unchanged."""
    return images.float().div(255.0) if images.dtype == torch.uint8 else images
