"""Bad images, bad annotation files and empty captions: each gives one line naming the file (and the
entry), images are skipped and counted (decompression bombs and images above the pixel limit included),
``fvl-data check`` lists oversized images by path and counts empty captions."""

from __future__ import annotations

import json
import logging
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from fashion_vl.cli.data import main as fvl_data
from fashion_vl.data.captions import apply_empty_caption_policy
from fashion_vl.data.datasets import ImageReader, ProductDataset
from fashion_vl.data.formats import DataFormatError, FashionGenSource
from fashion_vl.data.formats._tryon import read_pairs
from fashion_vl.data.images import DEFAULT_MAX_PIXELS, ImageLoadError, read_image
from fashion_vl.data.prepare.polyvore import read_categories_csv
from fashion_vl.data.products import ProductDataModule
from fashion_vl.data.records import Product, ProductTable
from fashion_vl.data.samplers import SampleKey


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG declaring ``width x height`` RGB pixels with almost no data: what a decompression bomb
    looks like to ``Image.open`` (which reads only the header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
    return path


def jpeg(path: Path, size: tuple[int, int] = (40, 30)) -> Path:
    Image.new("RGB", size, (200, 30, 60)).save(path, format="JPEG")
    return path


def make_bad_image(kind: str, folder: Path) -> tuple[Path, str]:
    """(the path a loader asks for, the name it asks with)."""
    path = folder / f"{kind}.jpg"
    if kind == "corrupt":
        path.write_bytes(b"this is not an image at all" * 10)
    elif kind == "truncated":
        data = jpeg(folder / "whole.jpg", (64, 64)).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "zero-byte":
        path.write_bytes(b"")
    elif kind == "bomb-256MP":
        png_header_only(path, 16_000, 16_000)  # above Pillow's own error limit (179 MP)
    elif kind == "bomb-144MP":
        png_header_only(path, 12_000, 12_000)  # Pillow only warns; above our 40 MP limit
    elif kind == "misnamed-other-suffix":
        return jpeg(folder / "named.png"), "named.jpg"  # found under another known suffix: fine
    return path, path.name


BAD = ["corrupt", "truncated", "zero-byte", "missing", "bomb-256MP", "bomb-144MP"]


@pytest.mark.parametrize("kind", BAD)
def test_each_bad_image_is_one_line_naming_the_file(tmp_path, kind) -> None:
    path, name = make_bad_image(kind, tmp_path)
    with pytest.raises(ImageLoadError) as err:
        ImageReader().load(tmp_path, name)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(path))
    assert err.value.oversized == kind.startswith("bomb")
    if kind == "bomb-144MP":
        assert "12000x12000 pixels (144.0 MP) is above the limit of 40 MP (data.max_image_pixels)" in message


def test_a_misnamed_image_is_found_under_its_real_suffix(tmp_path) -> None:
    _, name = make_bad_image("misnamed-other-suffix", tmp_path)
    assert ImageReader().load(tmp_path, name).shape == (3, 30, 40)


def test_the_pixel_limit_comes_from_config(tmp_path) -> None:
    big = jpeg(tmp_path / "big.jpg", (300, 200))
    assert read_image(big, max_pixels=None).shape == (3, 200, 300)
    with pytest.raises(ImageLoadError, match=r"300x200 pixels \(0.1 MP\) is above the limit of 0.05 MP"):
        ImageReader(max_pixels=50_000).load(tmp_path, "big.jpg")
    assert DEFAULT_MAX_PIXELS == 40_000_000


def test_large_jpegs_decode_at_reduced_scale_when_the_transform_downscales(tmp_path) -> None:
    photo = jpeg(tmp_path / "photo.jpg", (2000, 1600))
    assert read_image(photo).shape == (3, 1600, 2000)
    # draft_size = (width, height) the transform resizes to
    assert read_image(photo, (250, 200)).shape == (3, 200, 250)  # 1/8 scale, both sides still >= draft
    assert read_image(photo, (500, 500)).shape == (3, 800, 1000)  # 1/2: 1/4 would be below 500
    assert read_image(photo, (900, 900)).shape == (3, 1600, 2000)  # less than 2x: full size
    png = tmp_path / "photo.png"
    Image.new("RGB", (2000, 1600)).save(png)
    assert read_image(png, (250, 200)).shape == (3, 1600, 2000)  # not a JPEG: no draft


def test_training_skips_and_counts_bombs_like_corrupt_images(tmp_path) -> None:
    png_header_only(tmp_path / "1_0.jpg", 16_000, 16_000)
    png_header_only(tmp_path / "2_0.jpg", 12_000, 12_000)
    jpeg(tmp_path / "1_1.jpg")
    jpeg(tmp_path / "3_0.jpg")
    table = ProductTable(
        "FashionGen", "train", tmp_path, tmp_path / "train_info.json",
        [Product(1, ("1_0.jpg", "1_1.jpg"), "a"), Product(2, ("2_0.jpg",), "b"), Product(3, ("3_0.jpg",), "c")],
    )  # fmt: skip
    dataset = ProductDataset([table], transform=lambda image: image.float())
    bad = []
    for seed in range(8):  # product 1 draws its bomb view for some seeds and falls back to its other image
        sample = dataset[SampleKey(0, seed)]
        assert sample["product_id"] == 1 and sample["image"].shape == (3, 30, 40)
        bad += sample["bad_images"]
    assert any("1_0.jpg" in b and "too large to decode" in b for b in bad)
    sample = dataset[1]  # product 2 has no loadable image: replaced by another product
    assert sample["product_id"] in (1, 3)
    assert any("2_0.jpg" in b and "above the limit" in b for b in sample["bad_images"])


def test_fvl_data_check_lists_oversized_images_and_counts_empty_captions(fixture_data, capsys) -> None:
    info = fixture_data / "FashionGen" / "train_info.json"
    entries = json.loads(info.read_text())
    bomb = fixture_data / "FashionGen" / "train" / entries[0]["images"][0]
    png_header_only(bomb, 12_000, 12_000)
    entries[1]["title"], entries[1]["description"] = "", "  "
    info.write_text(json.dumps(entries))
    assert fvl_data(["check", str(fixture_data), "--workers", "2"]) == 1
    out = capsys.readouterr().err
    assert f"FashionGen/train: oversized: {bomb}: 12000x12000 pixels (144.0 MP) is above the limit" in out
    assert (
        f"warning: FashionGen/train: 1 product(s) with an empty caption (no title, no description): {entries[1]['id']}"
        in " ".join(out.split())
    )
    # no limit: the header-only file is decoded, and found corrupt (it has no pixel data)
    assert fvl_data(["check", str(fixture_data), "--workers", "2", "--max-image-pixels", "0"]) == 1
    out = capsys.readouterr().err
    assert "oversized:" not in out and f"corrupt: {bomb}: cannot decode" in out


def test_empty_captions_are_kept_or_skipped_for_training(fixture_data, caplog) -> None:
    info = fixture_data / "FashionGen" / "train_info.json"
    entries = json.loads(info.read_text())
    entries[1]["title"] = entries[1]["description"] = ""
    info.write_text(json.dumps(entries))
    for policy, expected in (("keep", len(entries)), ("skip", len(entries) - 1)):
        data = ProductDataModule(
            train_sources={"fashiongen": FashionGenSource(fixture_data, "train")},
            tokenizer="unused",
            train_transform=lambda x: x,
            eval_transform=lambda x: x,
            empty_captions=policy,
        )
        with caplog.at_level(logging.WARNING, logger="fashion_vl.data.captions"):
            data.setup("fit")
        assert len(data.train_set) == expected
        assert f"1 product(s) with an empty caption (e.g. id {entries[1]['id']})" in caplog.text
    with pytest.raises(ValueError, match=r"data\.empty_captions must be keep or skip, not 'drop'"):
        apply_empty_caption_policy([], "drop")


# --------------------------------------------------------------------------- annotation files


def test_non_utf8_json_names_the_file_line_entry_and_field(fixture_data) -> None:
    info = fixture_data / "FashionGen" / "train_info.json"
    text = info.read_text()
    entries = json.loads(text)
    title = entries[2]["title"]
    info.write_bytes(text.replace(title, title + " \x00").encode().replace(b"\x00", b"caf\xe9"))
    with pytest.raises(DataFormatError) as err:
        FashionGenSource(fixture_data, "train").read()
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{info}: line 4, entry 2 (id={entries[2]['id']}), field 'title': not UTF-8")
    assert "byte(s) e9" in message


def test_non_utf8_txt_and_csv_name_the_file_and_line(tmp_path) -> None:
    pairs = tmp_path / "train_pairs.txt"
    pairs.write_bytes(b"00001_00.jpg 00001_00.jpg\n0000\xff_00.jpg 00002_00.jpg\n")
    with pytest.raises(DataFormatError, match=rf"^{pairs}: line 2: not UTF-8 \(byte\(s\) ff"):
        read_pairs(pairs, dataset="VITON-HD", hint="")
    categories = tmp_path / "categories.csv"
    categories.write_bytes(b"1,tops,top\n2,jupe pliss\xe9e,bottom\n")
    with pytest.raises(DataFormatError, match=rf"^{categories}: line 2: not UTF-8"):
        read_categories_csv(categories)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda text: text[: len(text) // 2], "not valid JSON"),
        (
            lambda text: text.replace('"title"', '"name"', 1),
            "entry 0 (id=100123): required field 'title' is missing",
        ),
        (lambda text: "", "not valid JSON"),
    ],
    ids=["truncated", "missing-field", "empty"],
)
def test_broken_json_is_one_line_naming_the_file(fixture_data, damage, expected) -> None:
    info = fixture_data / "FashionGen" / "train_info.json"
    info.write_text(damage(info.read_text()))
    with pytest.raises(DataFormatError) as err:
        FashionGenSource(fixture_data, "train").read()
    assert str(err.value).startswith(str(info)) and expected in str(err.value)
    assert "\n" not in str(err.value)
