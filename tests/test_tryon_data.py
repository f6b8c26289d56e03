"""Try-on data: synthetic VITON-HD, the VITON-HD and Dress Code readers, TryOnDataset/DataModule."""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from PIL import Image

from fashion_vl.data.datasets import ImageReader, TooManyBadImagesError
from fashion_vl.data.formats import DataFormatError, MissingDataFileError
from fashion_vl.data.formats._tryon import CaptionTable, missing_files
from fashion_vl.data.formats.dresscode import MASK_LABELS, read_dresscode
from fashion_vl.data.formats.vitonhd import read_vitonhd
from fashion_vl.data.images import ImageLoadError
from fashion_vl.data.samplers import SampleKey
from fashion_vl.data.synth import generate
from fashion_vl.data.synth.generate import OPTIONAL_WRITERS, WRITERS
from fashion_vl.data.synth.taxonomy import sample_garment, subcategories_of
from fashion_vl.data.synth.tryon import BACKDROPS, HAIR, SKINS, TROUSERS, TryOnJob, draw_item
from fashion_vl.data.tryon import TryOnDataModule, TryOnDataset, collate_tryon
from tests.conftest import compose_config

H, W = 64, 48


@pytest.fixture(scope="module")
def tryon_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<data_dir>`` holding only the synthetic VITON-HD (16 train, 8 test people at 64x48)."""
    out = tmp_path_factory.mktemp("tryon") / "datasets"
    generate(out, size="tiny", image_size=H, workers=1, only=["vitonhd"])
    return out


@pytest.fixture(scope="module")
def root(tryon_data: Path) -> Path:
    return tryon_data / "vitonhd"


def test_vitonhd_is_optional_in_the_generator() -> None:
    assert "vitonhd" in OPTIONAL_WRITERS and "vitonhd" not in WRITERS
    assert list(WRITERS) == ["fashiongen", "bigfacad", "fashion200k", "polyvore", "fashioniq"]


def test_synth_writes_the_vitonhd_layout(tryon_data: Path, root: Path) -> None:
    manifest = json.loads((tryon_data / "synthetic_manifest.json").read_text())
    assert manifest["datasets"] == ["vitonhd"] and manifest["counts"]["vitonhd/test"] == 8
    for split, count in (("train", 16), ("test", 8)):
        lines = (root / f"{split}_pairs.txt").read_text().splitlines()
        assert len(lines) == count
        for sub in (
            "image",
            "agnostic-v3.2",
            "agnostic-mask",
            "cloth",
            "cloth-mask",
            "image-densepose",
            "im_sketch",
        ):
            assert len(list((root / split / sub).iterdir())) == count, sub
        with Image.open(root / split / "image" / lines[0].split()[0]) as img:
            assert img.size == (W, H)
    assert len(list((root / "test" / "im_sketch_unpaired").iterdir())) == 8
    captions = json.loads((root / "captions.json").read_text())
    attributes = json.loads((root / "synthetic_attributes.json").read_text())
    assert len(captions) == len(attributes) == 24
    for name, a in attributes.items():
        assert {"colour", "category", "pattern"} <= set(a)
        assert captions[name[:5]][0].startswith(a["colour"])  # MGD form: phrases keyed by 5 chars
        assert any(a["pattern"] in p for p in captions[name[:5]]) or a["pattern"] == "solid"
    for split in ("train", "test"):
        for mode in ("paired", "unpaired"):
            assert missing_files(read_vitonhd(root, split, mode), limit=None) == []


def test_paired_and_unpaired(root: Path) -> None:
    listed = [line.split() for line in (root / "test_pairs.txt").read_text().splitlines()]
    paired = read_vitonhd(root, "test", "paired")
    unpaired = read_vitonhd(root, "test", "unpaired")
    assert [r.person for r in paired] == [r.person for r in unpaired] == [p for p, _ in listed]
    assert all(r.cloth == r.person for r in paired)
    assert [r.cloth for r in unpaired] == [c for _, c in listed]
    assert all(r.cloth != r.person for r in unpaired)  # synthetic test pairs are a derangement
    assert all(r.sketch.parent.name == "im_sketch" for r in paired)
    assert all(r.sketch.parent.name == "im_sketch_unpaired" for r in unpaired)
    captions = json.loads((root / "captions.json").read_text())
    assert all(r.caption == ", ".join(captions[r.cloth[:5]]) for r in unpaired)  # the cloth's caption
    train = read_vitonhd(root, "train", "unpaired")  # train_pairs.txt is paired
    assert all(r.cloth == r.person for r in train)
    assert read_vitonhd(root, "train", sketch_dir=None)[0].sketch is None


def test_items_have_the_documented_shapes_and_ranges(root: Path) -> None:
    dataset = TryOnDataset(read_vitonhd(root, "test", "unpaired"), (H, W))
    item = dataset[0]
    for key in ("image", "agnostic", "cloth"):  # uint8: the model maps them to [-1, 1] on the device
        t = item[key]
        assert t.shape == (3, H, W) and t.dtype == torch.uint8 and t.max() > t.min(), key
    t = item["densepose"]
    assert t.shape == (3, H, W) and t.dtype == torch.float32 and t.min() >= -1 and t.max() <= 1
    for key in ("agnostic_mask", "cloth_mask"):
        assert item[key].shape == (1, H, W) and set(item[key].unique().tolist()) == {0.0, 1.0}, key
    assert item["sketch"].shape == (1, H, W) and item["sketch"].min() >= 0 and item["sketch"].max() == 1
    record = dataset.records[0]
    assert item["person_id"] == record.person and item["cloth_id"] == record.cloth != record.person
    assert item["caption"] == record.caption and item["bad_images"] == []
    smaller = TryOnDataset(dataset.records, (32, 24))[0]
    assert smaller["image"].shape == (3, 32, 24) and smaller["agnostic_mask"].shape == (1, 32, 24)
    batch = collate_tryon([dataset[0], dataset[1]])
    assert batch["image"].shape == (2, 3, H, W) and batch["caption"] == [
        dataset[0]["caption"],
        dataset[1]["caption"],
    ]


def test_mask_is_one_exactly_where_the_agnostic_image_is_grey() -> None:
    rng = random.Random(0)
    for _ in range(4):  # as drawn, before JPEG
        job = TryOnJob("train", "00001_00", sample_garment(rng, subcategories_of("top")), rng.getrandbits(31),
                       SKINS[0], HAIR[0], TROUSERS[0], BACKDROPS[0])  # fmt: skip
        files = draw_item(job, H, W)
        person, agnostic = (np.asarray(files[k][0], dtype=np.int16) for k in ("image", "agnostic-v3.2"))
        mask = np.asarray(files["agnostic-mask"][0]) == 255
        assert set(np.unique(np.asarray(files["agnostic-mask"][0]))) == {0, 255} and mask.mean() > 0.1
        grey = (agnostic == 128).all(-1)
        assert grey[mask].all() and not grey[~mask].any()
        assert (agnostic[~mask] == person[~mask]).all()


def test_mask_matches_the_grey_area_after_loading(root: Path) -> None:
    dataset = TryOnDataset(read_vitonhd(root, "train"), (H, W))
    erode = torch.nn.MaxPool2d(3, 1, 1)
    for index in range(4):
        item = dataset[index]
        mask = item["agnostic_mask"][0].bool()
        inner = ~erode((~mask)[None].float())[0].bool()  # away from the rim, where JPEG rings
        grey = ((item["agnostic"].float() - 128).abs() <= 12).all(0)
        assert mask.float().mean() > 0.1 and inner.sum() > 0.5 * mask.sum()
        assert grey[inner].float().mean() >= 0.97
        assert (grey & ~mask).sum() <= 0.01 * (~mask).sum()  # outside: the person, not grey
        # the person differs from the agnostic image only under the mask
        changed = (item["image"].float() - item["agnostic"].float()).abs().amax(0) > 32  # 0.25 in [-1, 1]
        assert (changed & ~mask).sum() <= 0.01 * (~mask).sum()


def test_flip_mirrors_every_map_together(root: Path) -> None:
    records = read_vitonhd(root, "train")
    plain = TryOnDataset(records, (H, W))[SampleKey(0, 0)]
    flipping = TryOnDataset(records, (H, W), flip=True)
    outcomes = []
    for seed in range(8):
        item = flipping[SampleKey(0, seed)]
        flipped = torch.equal(item["image"], plain["image"].flip(-1))
        outcomes.append(flipped)
        for key in ("image", "agnostic", "agnostic_mask", "densepose", "cloth", "cloth_mask", "sketch"):
            assert torch.equal(item[key], plain[key].flip(-1) if flipped else plain[key]), key
    assert any(outcomes) and not all(outcomes)


def test_a_corrupt_image_is_skipped_with_a_warning(root: Path, tmp_path: Path, caplog) -> None:
    records = read_vitonhd(root, "train")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    records[0] = dataclasses.replace(records[0], image=broken)
    with caplog.at_level(logging.WARNING, logger="fashion_vl.data.tryon"):
        item = TryOnDataset(records, (H, W))[SampleKey(0, 3)]
    assert item["person_id"] != records[0].person and item["image"].shape == (3, H, W)
    assert len(item["bad_images"]) == 1 and str(broken) in item["bad_images"][0]
    assert any(str(broken) in r.getMessage() for r in caplog.records)
    records[1] = dataclasses.replace(records[1], sketch=tmp_path / "absent.png")
    item = TryOnDataset(records[1:3], (H, W))[0]  # a missing sketch is a bad item too
    assert item["bad_images"] and item["person_id"] == records[2].person
    with pytest.raises(TooManyBadImagesError, match="3 try-on items in a row"):
        TryOnDataset(records[1:2], (H, W), reader=ImageReader(max_consecutive_failures=3))[0]
    with pytest.raises(ImageLoadError, match=r"broken\.jpg"):
        TryOnDataset(records, (H, W), reader=ImageReader(strict=True))[0]


def test_malformed_pairs_line_names_file_and_line(root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "vitonhd"
    bad.mkdir()
    (bad / "train").mkdir()
    (bad / "train" / "image").symlink_to(root / "train" / "image")
    (bad / "train_pairs.txt").write_text("00001_00.jpg 00001_00.jpg\n\n00002_00.jpg\n")
    with pytest.raises(DataFormatError, match=r"train_pairs\.txt:3: expected 'person\.jpg cloth\.jpg'"):
        read_vitonhd(bad, "train")
    with pytest.raises(MissingDataFileError, match=r"test_pairs\.txt"):
        read_vitonhd(bad, "test")


def test_captions_in_both_json_forms(root: Path, tmp_path: Path) -> None:
    person = read_vitonhd(root, "test")[0].person  # "<5 digits>_00.jpg"
    by_name = tmp_path / "datasetcap.test.caption.json"
    by_name.write_text(json.dumps({person: "  a red t-shirt "}))
    by_prefix = tmp_path / "captions.json"
    by_prefix.write_text(json.dumps({person[:5]: ["red t-shirt", "short sleeves"]}))
    assert CaptionTable.load(by_name).get(person) == "a red t-shirt"
    assert CaptionTable.load(by_prefix).get(person) == "red t-shirt, short sleeves"
    for path, want in ((by_name, "a red t-shirt"), (by_prefix, "red t-shirt, short sleeves")):
        records = read_vitonhd(root, "test", captions=path)
        assert records[0].caption == want and records[1].caption == ""
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps({"a": "x", "b": ["y"]}))
    with pytest.raises(DataFormatError, match="mixes"):
        CaptionTable.load(mixed)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"00001": 3}))
    with pytest.raises(DataFormatError, match="'00001'"):
        CaptionTable.load(wrong)


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _dresscode(root: Path) -> None:
    """Two upper-body people (per-category pairs files), one dress (root-level pairs, 3 columns)."""
    for category, ids in (("upper_body", ("000001", "000002")), ("dresses", ("020001",))):
        folder = root / category
        for i in ids:
            person = np.full((H, W, 3), 200, np.uint8)
            person[20:40, 10:38] = (200, 20, 20)
            _png(folder / "images" / f"{i}_0.jpg", person)
            cloth = np.full((H, W, 3), 255, np.uint8)
            cloth[16:48, 8:40] = (20, 20, 200)
            _png(folder / "images" / f"{i}_1.jpg", cloth)
            labels = np.zeros((H, W), np.uint8)
            labels[20:40, 10:38] = 4 if category == "upper_body" else 7
            labels[40:60, 14:34] = 12
            _png(folder / "label_maps" / f"{i}_4.png", labels)
            _png(folder / "dense" / f"{i}_5.png", (labels > 0).astype(np.uint8) * 2)
            _png(folder / "im_sketch" / f"{i}_1.png", np.zeros((H, W), np.uint8))
    up = root / "upper_body"
    (up / "train_pairs.txt").write_text("000001_0.jpg 000001_1.jpg\n000002_0.jpg 000002_1.jpg\n")
    (up / "test_pairs_paired.txt").write_text("000001_0.jpg 000001_1.jpg\n")
    (up / "test_pairs_unpaired.txt").write_text("000001_0.jpg 000002_1.jpg\n")
    _png(up / "im_sketch_unpaired" / "000001_0_000002_1.png", np.full((H, W), 255, np.uint8))
    (root / "train_pairs.txt").write_text("020001_0.jpg 020001_1.jpg 2\n000001_0.jpg 000001_1.jpg 0\n")
    (root / "fine_captions.json").write_text(
        json.dumps({"000001": ["blue top", "cotton"], "020001": ["dress"]})
    )


def test_dresscode_reader_and_items(tmp_path: Path) -> None:
    root = tmp_path / "dresscode"
    _dresscode(root)
    train = read_dresscode(root, "train", categories=("upper_body", "dresses"))
    assert [(r.category, r.person) for r in train] == [
        ("upper_body", "000001_0.jpg"), ("upper_body", "000002_0.jpg"), ("dresses", "020001_0.jpg")
    ]  # fmt: skip
    assert [r.caption for r in train] == ["blue top, cotton", "", "dress"]
    assert train[0].label_map == root / "upper_body" / "label_maps" / "000001_4.png"
    assert train[2].mask_labels == MASK_LABELS["dresses"]
    unpaired = read_dresscode(root, "test", "unpaired", categories=("upper_body",))
    assert unpaired[0].cloth == "000002_1.jpg" and unpaired[0].sketch.name == "000001_0_000002_1.png"
    paired = read_dresscode(root, "test", "paired", categories=("upper_body",))
    assert paired[0].cloth == "000001_1.jpg" and paired[0].sketch.parent.name == "im_sketch"

    item = TryOnDataset(train, (H, W))[0]
    mask = item["agnostic_mask"][0].bool()
    expected = torch.zeros(H, W, dtype=torch.bool)
    expected[20:40, 10:38] = True  # upper clothes (4); the legs (12) stay
    assert torch.equal(mask, expected)
    assert (item["agnostic"][:, mask] == 128).all()
    assert torch.equal(item["agnostic"][:, ~mask], item["image"][:, ~mask])
    assert item["cloth_mask"][0, 16:48, 8:40].all() and item["cloth_mask"].sum() == 32 * 32
    assert (item["densepose"][:, 0, 0] == -1).all() and (item["densepose"][:, 30, 20] != -1).any()
    assert TryOnDataset(unpaired, (H, W))[0]["sketch"].min() == 1
    with pytest.raises(ValueError, match="categories"):
        read_dresscode(root, "train", categories=("shoes",))


def test_datamodule_from_config(tryon_data: Path, tmp_path: Path) -> None:
    try:
        cfg = compose_config("train", ["data=vitonhd_synth"], tmp_path, tryon_data)
        assert cfg.data.data_dir == f"{tryon_data}/vitonhd" and (cfg.data.height, cfg.data.width) == (H, W)
        dm = instantiate(cfg.data, _convert_="partial")
    finally:
        GlobalHydra.instance().clear()
    assert isinstance(dm, TryOnDataModule)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, H, W) and batch["agnostic_mask"].shape == (4, 1, H, W)
    assert len(batch["caption"]) == 4 and all(batch["caption"])
    val = next(iter(dm.val_dataloader()))
    assert val["person_id"] == val["cloth_id"]  # validation: test split, paired
    dm.setup("test")
    test = next(iter(dm.test_dataloader()))
    assert all(p != c for p, c in zip(test["person_id"], test["cloth_id"]))  # test: unpaired
    with pytest.raises(ValueError, match="dataset"):
        TryOnDataModule(dataset="viton", data_dir=str(tryon_data))


def test_real_size_configs_compose(tmp_path: Path) -> None:
    try:
        for name in ("vitonhd", "dresscode"):
            cfg = compose_config("train", [f"data={name}"], tmp_path, tmp_path)
            assert (cfg.data.height, cfg.data.width) == (512, 384)
            assert cfg.data.data_dir == f"{tmp_path}/{name}" and cfg.data.dataset == name
    finally:
        GlobalHydra.instance().clear()
