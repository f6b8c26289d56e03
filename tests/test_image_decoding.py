"""Reduced-size JPEG decoding (``Image.draft``) only where the transform downscales anyway, and the
model inputs it gives stay within a stated tolerance of a full decode."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fashion_vl.data.datasets import ImageReader, ProductDataset
from fashion_vl.data.formats import FashionGenSource
from fashion_vl.data.images import ImageLoadError, decode_jpeg, decode_png, draft_scale, read_image
from fashion_vl.data.synth.render import render, sample_view
from fashion_vl.data.synth.taxonomy import sample_garment
from fashion_vl.data.transforms import (
    draft_size,
    random_resized_crop,
    resize_crop,
    target_pad,
)

# The stated tolerance (docs/performance.md): after the transform, the mean absolute difference from
# a full decode is at most 2 grey levels of 255 per image, and 99% of values are within 24 (the hard
# edges of flat synthetic drawings are the worst case: measured 0.1-0.6 mean, 2-20 at the 99th).
MEAN_LEVELS, P99_LEVELS = 2.0, 24.0


def large_jpegs(folder: Path, sides: tuple[int, ...] = (512, 600, 1024, 2048)) -> list[Path]:
    rng = random.Random(0)
    paths = []
    for i, side in enumerate(sides):
        picture = render(sample_garment(rng), sample_view(rng, 0), 256, seed=i)
        path = folder / f"{side}.jpg"
        picture.convert("RGB").resize((side, side * 4 // 3), Image.Resampling.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths


def test_draft_size_only_where_the_transform_resizes_first() -> None:
    assert draft_size(resize_crop(True, size=224, resize=256)) == (256, 256)
    assert draft_size(resize_crop(False, size=224, resize=256)) == (256, 256)
    assert draft_size(random_resized_crop(False, size=224)) == (224, 224)
    assert draft_size(random_resized_crop(True, size=224)) is None  # crops before resizing
    assert draft_size(target_pad(False, size=224)) is None  # short-side resize
    assert draft_size(lambda image: image) is None


def test_draft_keeps_model_inputs_within_tolerance(tmp_path: Path) -> None:
    transform = resize_crop(False, size=224, resize=256)
    for path in large_jpegs(tmp_path):
        full, drafted = read_image(path), read_image(path, draft_size(transform))
        assert drafted.shape[1] < full.shape[1] and min(drafted.shape[1:]) >= 256, path.name  # drafted
        levels = (transform(full).float() - transform(drafted).float()).abs()  # uint8 grey levels
        assert levels.mean() <= MEAN_LEVELS, (path.name, float(levels.mean()))
        assert levels.flatten().quantile(0.99) <= P99_LEVELS, path.name


def test_small_jpegs_and_pngs_decode_in_full(tmp_path: Path) -> None:
    picture = Image.new("RGB", (400, 500), (200, 30, 90))
    picture.save(tmp_path / "small.jpg", quality=90)  # < 2x the 256 target: no reduction possible
    picture.resize((200, 240)).save(tmp_path / "smaller.jpg", quality=90)  # below the target itself
    picture.save(tmp_path / "big.png")  # PNG has no reduced decoding
    assert draft_scale(200, 240, (256, 256)) == draft_scale(400, 500, (256, 256)) == 1
    assert draft_scale(1024, 1365, (256, 256)) == 4 and draft_scale(4096, 4096, (256, 256)) == 8
    for name in ("small.jpg", "smaller.jpg", "big.png"):
        assert torch.equal(read_image(tmp_path / name, (256, 256)), read_image(tmp_path / name))


def pillow_decode(path: Path, draft: tuple[int, int] | None = None) -> torch.Tensor:
    """Today's reference decoder: Pillow, with its own ``draft``."""
    with Image.open(path) as img:
        if draft is not None:
            img.draft("RGB", draft)
        return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)


def test_jpeg_decoder_gives_pillows_pixels(tmp_path: Path) -> None:
    """simplejpeg (the read path's JPEG decoder) against Pillow: full decode, reduced decode, and
    the files it declines (CMYK) or that need a conversion (grey)."""
    paths = large_jpegs(tmp_path)
    for path in paths:
        assert torch.equal(read_image(path), pillow_decode(path)), path.name
        assert torch.equal(read_image(path, (256, 256)), pillow_decode(path, (256, 256))), path.name
    with Image.open(paths[0]) as img:
        img.convert("L").save(tmp_path / "grey.jpg", quality=90)
        img.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=90)
    for name in ("grey.jpg", "cmyk.jpg"):
        assert torch.equal(read_image(tmp_path / name), pillow_decode(tmp_path / name)), name
    assert decode_jpeg((tmp_path / "cmyk.jpg").read_bytes()) is None  # Pillow's conversion decides


def test_png_decoder_gives_pillows_pixels(tmp_path: Path) -> None:
    """pyspng (the read path's PNG decoder) against Pillow's ``convert("RGB")`` for every colour type
    it takes (grey, RGB, RGBA, with transparency chunks), and the files it leaves to Pillow (grey+alpha,
    palette, 16-bit, damaged)."""
    rng = random.Random(1)
    picture = render(sample_garment(rng), sample_view(rng, 0), 96, seed=3).convert("RGB")
    rgba = picture.copy()
    rgba.putalpha(Image.linear_gradient("L").resize(picture.size))
    files = {
        "rgb.png": (picture, {}),
        "rgb_trns.png": (picture, {"transparency": (255, 255, 255)}),
        "rgba.png": (rgba, {}),
        "grey.png": (picture.convert("L"), {}),
        "grey_trns.png": (picture.convert("L"), {"transparency": 0}),
        "grey_alpha.png": (rgba.convert("LA"), {}),
        "palette.png": (picture.convert("P"), {}),
        "grey16.png": (picture.convert("I;16"), {}),
        "rgb_compressed.png": (picture, {"compress_level": 9, "optimize": True}),
    }
    for name, (image, options) in files.items():
        image.save(tmp_path / name, **options)
        assert torch.equal(read_image(tmp_path / name), pillow_decode(tmp_path / name)), name
    taken = {name for name in files if decode_png((tmp_path / name).read_bytes()) is not None}
    assert taken == set(files) - {"grey_alpha.png", "palette.png", "grey16.png"}
    data = (tmp_path / "rgb.png").read_bytes()
    assert decode_png(data[: len(data) // 2]) is None  # truncated: Pillow reads it and names the error
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match=r"truncated\.png: cannot decode"):
        read_image(tmp_path / "truncated.png")
    with pytest.raises(ImageLoadError, match="above the limit"):  # from IHDR, before decoding
        read_image(tmp_path / "rgb.png", max_pixels=96 * 96 - 1)


@pytest.mark.parametrize("jpeg_draft", [True, False])
def test_reader_setting_reaches_the_dataset(synth_dir: Path, jpeg_draft: bool) -> None:
    table = FashionGenSource(synth_dir, "train").read()
    dataset = ProductDataset([table], resize_crop(True, 16, 20), reader=ImageReader(jpeg_draft=jpeg_draft))
    assert dataset.draft == ((20, 20) if jpeg_draft else None)
