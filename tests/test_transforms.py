"""The pre-training transform's seeded fast path against torchvision's own Compose."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2

from fashion_vl.data.datasets import seeded_transform
from fashion_vl.data.transforms import ResizeCropFlip, draft_size, resize_crop


def compose_on_global_generator(transform: v2.Compose, image: torch.Tensor, seed: int) -> torch.Tensor:
    """What the datasets did before the fast path: the v2 Compose on torch's global generator."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        return v2.Compose(list(transform.transforms))(image)


def hwc_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """``uint8 [3, H, W]`` viewing ``[H, W, 3]`` memory, as the decoders give it."""
    pixels = torch.randint(
        0, 256, (height, width, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )
    return pixels.permute(2, 0, 1)


@pytest.mark.parametrize(
    ("height", "width", "size", "resize", "hflip"),
    [
        (256, 256, 224, 256, True),  # the synthetic data's and FashionGen's size: the resize is a no-op
        (300, 210, 224, 256, True),  # a real resize first
        (40, 64, 24, 32, True),
        (32, 32, 32, 32, True),  # crop = resize: no offset drawn, only the flip
        (48, 40, 24, 32, False),
    ],
)
def test_seeded_fast_path_gives_the_composes_pixels(
    height: int, width: int, size: int, resize: int, hflip: bool
) -> None:
    transform = resize_crop(True, size=size, resize=resize, hflip=hflip)
    assert isinstance(transform, ResizeCropFlip)
    image = hwc_image(height, width)
    flipped = set()
    for seed in range(40):
        fast = transform.seeded(image, seed)
        reference = compose_on_global_generator(transform, image, seed)
        assert fast.dtype == torch.uint8 and fast.shape == (3, size, size)
        assert torch.equal(fast, reference), seed
        with torch.random.fork_rng(devices=[]):  # the crop alone: same draws, no flip
            torch.random.default_generator.manual_seed(seed)
            crop = v2.Compose(list(transform.transforms)[:2])(image)
        flipped.add(not torch.equal(fast, crop))
    assert flipped == ({True, False} if hflip else {False})


def test_seeded_transform_takes_the_fast_path_and_leaves_the_global_stream() -> None:
    transform = resize_crop(True, size=24, resize=32)
    image = hwc_image(40, 50)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    out = seeded_transform(transform, image, 7)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's stream is untouched
    assert torch.equal(out, compose_on_global_generator(transform, image, 7))


def test_it_is_still_the_compose_torchvision_and_the_reader_see() -> None:
    transform = resize_crop(True, size=224, resize=256)
    assert [type(op) for op in transform.transforms] == [v2.Resize, v2.RandomCrop, v2.RandomHorizontalFlip]
    assert draft_size(transform) == (256, 256)
    assert transform(hwc_image(300, 200)).shape == (3, 224, 224)  # forward: the Compose itself
    with pytest.raises(ValueError, match=r"crop size \(300\) is larger than the resize \(256\)"):
        resize_crop(True, size=300, resize=256)
