"""Image reading, skipping of bad images, datasets, collation keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from fashion_vl.data.collate import GalleryCollator, ImageTextCollator, TextTokenizer
from fashion_vl.data.datasets import (
    ImageReader,
    ProductDataset,
    ProductGalleryDataset,
    TooManyBadImagesError,
)
from fashion_vl.data.formats import FashionGenSource
from fashion_vl.data.images import ImageLoadError, load_image, resolve_image
from fashion_vl.data.samplers import SampleKey
from fashion_vl.data.transforms import resize_crop
from fashion_vl.hub import load_tokenizer

TRANSFORM = resize_crop(train=True, size=32, resize=36)


def corrupt(path: Path) -> None:
    path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")


def test_extension_fallback(tmp_path: Path) -> None:
    Image.new("RGB", (10, 12), "red").save(tmp_path / "a.png")
    Image.new("L", (10, 12), 128).save(tmp_path / "b.bmp")
    assert resolve_image(tmp_path, "a.jpg") == tmp_path / "a.png"  # JSON says .jpg, file is .png
    assert resolve_image(tmp_path, "a") == tmp_path / "a.png"
    rgb = load_image(tmp_path, "b.jpeg")  # grey BMP through PIL, converted to RGB
    assert rgb.shape == (3, 12, 10) and rgb.dtype == torch.uint8
    with pytest.raises(ImageLoadError, match="no such image"):
        resolve_image(tmp_path, "missing.jpg")


def test_corrupt_jpeg_raises_image_load_error(tmp_path: Path) -> None:
    corrupt(tmp_path / "x.jpg")
    with pytest.raises(ImageLoadError, match="cannot decode"):
        load_image(tmp_path, "x.jpg")


def test_corrupt_image_is_skipped_and_counted(fixture_data: Path) -> None:
    table = FashionGenSource(fixture_data, "train").read()
    corrupt(table.image_dir / "100123_0.png")
    ds = ProductDataset([table], TRANSFORM)
    seen_bad = []
    for seed in range(20):  # product 0 has two images; the bad one is drawn about half the time
        sample = ds[SampleKey(0, seed)]
        assert sample["product_id"] == 100123 and sample["image"].shape == (3, 32, 32)
        seen_bad += sample["bad_images"]
    assert seen_bad and all("100123_0.png" in b for b in seen_bad)


def test_product_without_loadable_image_is_replaced(fixture_data: Path) -> None:
    table = FashionGenSource(fixture_data, "train").read()
    corrupt(table.image_dir / "100124_0.png")  # product 1's only image
    ds = ProductDataset([table], TRANSFORM)
    sample = ds[SampleKey(1, 3)]
    assert sample["product_id"] != 100124  # another product, drawn from the sample's seed
    assert any("100124_0.png" in b for b in sample["bad_images"])
    assert ds[SampleKey(1, 3)]["product_id"] == sample["product_id"]  # deterministic


def test_strict_images_makes_bad_image_fatal(fixture_data: Path) -> None:
    table = FashionGenSource(fixture_data, "train").read()
    (table.image_dir / "100124_0.png").unlink()
    ds = ProductDataset([table], TRANSFORM, reader=ImageReader(strict=True))
    with pytest.raises(ImageLoadError, match="strict_images"):
        ds[SampleKey(1, 0)]


def test_wrong_image_folder_fails_loudly(fixture_data: Path) -> None:
    table = FashionGenSource(fixture_data, "train").read()
    table.image_dir = fixture_data / "nowhere"
    ds = ProductDataset([table], TRANSFORM, reader=ImageReader(max_consecutive_failures=5))
    with pytest.raises(TooManyBadImagesError, match="is the image folder right"):
        ds[0]


def test_views_and_augmentation_follow_the_sample_seed(fixture_data: Path) -> None:
    ds = ProductDataset([FashionGenSource(fixture_data, "train").read()], TRANSFORM, num_views=2)
    a, b = ds[SampleKey(2, 7)], ds[SampleKey(2, 7)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["image_view1"], b["image_view1"])
    c = ds[SampleKey(2, 8)]
    assert not torch.equal(a["image"], c["image"])


def test_gallery_dataset_yields_every_image(fixture_data: Path) -> None:
    table = FashionGenSource(fixture_data, "train").read()
    corrupt(table.image_dir / "100125_1.png")
    ds = ProductGalleryDataset(table, resize_crop(train=False, size=32, resize=36))
    sample = ds[2]
    assert len(sample["images"]) == 2 and sample["image_keys"] == [3, 5]  # key 4 was the corrupt one
    assert len(sample["bad_images"]) == 1


def test_collate_keys_contract(synth_dir: Path) -> None:
    tokenizer = load_tokenizer(str(synth_dir / "tokenizer"))
    text = TextTokenizer(tokenizer, max_length=16)
    table = FashionGenSource(synth_dir, "train").read()
    ds = ProductDataset([table], TRANSFORM, num_views=2)
    batch = ImageTextCollator(text)([ds[SampleKey(i, i)] for i in range(4)])
    assert set(batch) == {
        "image", "image_view1", "input_ids", "attention_mask", "product_id", "category_id",
        "subcategory_id", "attributes", "bad_images",
    }  # fmt: skip
    assert batch["image"].shape == (4, 3, 32, 32) and batch["input_ids"].shape[1] <= 16
    assert batch["input_ids"][:, 0].eq(tokenizer.cls_token_id).all()
    gallery = ProductGalleryDataset(table, TRANSFORM)
    gbatch = GalleryCollator(text)([gallery[i] for i in range(3)])
    n_images = sum(len(table.products[i].images) for i in range(3))
    assert (
        gbatch["image"].shape[0]
        == n_images
        == gbatch["image_product_id"].numel()
        == gbatch["image_key"].numel()
    )
    assert gbatch["input_ids"].shape[0] == 3


def test_static_padding_option(synth_dir: Path) -> None:
    text = TextTokenizer(load_tokenizer(str(synth_dir / "tokenizer")), max_length=30, pad_to_max_length=True)
    assert text(["red dress", "a much longer description of a blue wool coat"])["input_ids"].shape == (2, 30)


def test_load_or_replace_draws_another_item_and_gives_up_after_the_limit() -> None:
    import random

    from fashion_vl.data.datasets import ImageReader, TooManyBadImagesError
    from fashion_vl.data.images import ImageLoadError

    def load(index: int) -> str:
        if index < 3:
            raise ImageLoadError(f"img{index}.jpg", "cannot decode")
        return f"item{index}"

    bad: list[str] = []
    index, item = ImageReader().load_or_replace(load, 0, 10, random.Random(0), bad, "test")
    assert index >= 3 and item == f"item{index}"
    assert bad and bad[0] == "img0.jpg: cannot decode" and len(bad) < 10
    with pytest.raises(ImageLoadError, match="strict_images=true"):
        ImageReader(strict=True).load_or_replace(load, 1, 10, random.Random(0), [], "test")
    with pytest.raises(TooManyBadImagesError, match="4 test items in a row"):
        ImageReader(max_consecutive_failures=4).load_or_replace(load, 0, 3, random.Random(0), [], "test")
