"""``fvl-data prepare`` for FashionGen, Fashion200k and BigFACAD on tiny fixtures in the official layouts."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fashion_vl.cli.data import main
from fashion_vl.data.formats import BigFACADSource, Fashion200kSource, FashionGenSource, ProductSource
from fashion_vl.data.prepare import fashiongen
from fashion_vl.data.products import ProductDataModule
from fashion_vl.data.synth.tokenizer import train_wordpiece
from fashion_vl.data.transforms import resize_crop

# --------------------------------------------------------------------------- fixtures in official layouts

# (product id, name, description bytes, category, subcategory); 2 poses each
FASHIONGEN_ROWS = {
    "train": [
        (100123, b"Black wool blazer", b"Long sleeve wool blazer. Notched lapel.", b"JACKETS & COATS", b"BLAZERS"),
        (100124, b"Caf\xe9 silk shirt", b"Silk shirt in caf\xe9 au lait \x96 relaxed fit.", b"SHIRTS", b"SHIRTS"),
        (100125, b"Blue jeans", b"Five-pocket styling.", b"JEANS", b"JEANS"),
    ],
    "val": [
        (200001, b"Red sneakers", b"Low-top leather sneakers.", b"SNEAKERS", b"LOW TOP SNEAKERS"),
        (200002, b"Grey scarf", b"Wool scarf.", b"ACCESSORIES", b"SCARVES"),
        (200003, b"Navy blazer", b"Two-button blazer.", b"JACKETS & COATS", b"BLAZERS"),
    ],
}  # fmt: skip


def write_fashiongen_h5(path: Path, rows: list[tuple], size: int = 32, drop: str | None = None) -> None:
    """One row per image, poses stored out of order (pose 2 before pose 1), as (N, 1) byte strings."""
    h5py = pytest.importorskip("h5py")
    table = [(r, pose) for r in rows for pose in (2, 1)]
    n = len(table)
    images = np.zeros((n, size, size, 3), np.uint8)
    for i in range(n):
        images[i, ..., i % 3] = 40 * (i + 1)
    columns = {
        "input_image": images,
        "input_name": np.array([[r[1]] for r, _ in table], dtype="S64"),
        "input_description": np.array([[r[2]] for r, _ in table], dtype="S128"),
        "input_category": np.array([[r[3]] for r, _ in table], dtype="S32"),
        "input_subcategory": np.array([[r[4]] for r, _ in table], dtype="S32"),
        "input_productID": np.array([[r[0]] for r, _ in table], dtype=np.int32),
        "input_pose": np.array([[f"id_gridfs_{p}".encode()] for _, p in table], dtype="S16"),
    }
    with h5py.File(path, "w") as f:
        for key, value in columns.items():
            if key != drop:
                f.create_dataset(key, data=value, chunks=(1, *value.shape[1:]))


@pytest.fixture
def fashiongen_raw(tmp_path: Path) -> Path:
    raw = tmp_path / "fashiongen_release"
    raw.mkdir()
    write_fashiongen_h5(raw / "fashiongen_256_256_train.h5", FASHIONGEN_ROWS["train"])
    write_fashiongen_h5(raw / "fashiongen_256_256_validation.h5", FASHIONGEN_ROWS["val"])
    return raw


F200K_LABELS = {
    "dress_train": [
        ("women/dresses/casual_and_day_dresses/51727804/51727804_0.jpeg", "black sleeveless a-line dress"),
        ("women/dresses/casual_and_day_dresses/51727804/51727804_1.jpeg", "black sleeveless a-line dress"),
        ("women/dresses/casual_and_day_dresses/51727804/51727804_2.jpeg", "black a-line dress"),
        ("women/dresses/cocktail_dresses/40000001/40000001_0.jpeg", "red lace cocktail dress"),
    ],
    "jacket_train": [
        ("women/jackets/leather_jackets/30000001/30000001_1.jpeg", "brown leather biker jacket"),
        ("women/jackets/leather_jackets/30000001/30000001_0.jpeg", "brown leather biker jacket"),
    ],
    "dress_test": [("women/dresses/casual_and_day_dresses/60000001/60000001_0.jpeg", "blue maxi dress")],
    "jacket_test": [],
}


@pytest.fixture
def fashion200k_raw(tmp_path: Path) -> Path:
    raw = tmp_path / "fashion-200k"
    (raw / "labels").mkdir(parents=True)
    for i, (name, lines) in enumerate(F200K_LABELS.items()):
        text = "".join(f"{path}\t{0.9 - 0.1 * j:.4f}\t{desc}\n" for j, (path, desc) in enumerate(lines))
        (raw / "labels" / f"{name}_detect_all.txt").write_text(text)
        for j, (path, _) in enumerate(lines):
            (raw / path).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (24, 32), (30 * i, 20 * j, 90)).save(raw / path, format="JPEG")
    return raw


BIGFACAD_ROWS = [
    {"images": ["a81/2231_0.jpg", "a81/2231_1.jpg"], "id": 2231, "title": "Cotton crewneck sweater",
     "description": "a soft knit sweater with ribbed trims", "color": "navy"},
    {"images": ["a82/2232_0.jpg"], "id": 2232, "title": "Pleated midi skirt",
     "description": "a flowing skirt", "color": "olive", "split": "val"},
    {"images": ["a83/5_0.jpg"], "id": 5, "title": "Leather belt", "description": "", "color": "tan"},
]  # fmt: skip


@pytest.fixture
def bigfacad_raw(tmp_path: Path) -> Path:
    raw = tmp_path / "bigfacad_release"
    for i, row in enumerate(BIGFACAD_ROWS):
        for name in row["images"]:
            (raw / name).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (20, 28), (60 * i, 10, 200)).save(raw / name, format="JPEG")
    (raw / "products.jsonl").write_text("".join(json.dumps(r) + "\n" for r in BIGFACAD_ROWS))
    return raw


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    texts = [r[1].decode("latin-1") + " " + r[2].decode("latin-1") for rows in FASHIONGEN_ROWS.values()
             for r in rows] + [d for lines in F200K_LABELS.values() for _, d in lines]  # fmt: skip
    out = tmp_path_factory.mktemp("tokenizer")
    train_wordpiece(texts, out, vocab_size=256)
    return str(out)


def prepare(dataset: str, raw: Path, out: Path, *extra: str) -> int:
    return main(["prepare", dataset, "--raw", str(raw), "--out", str(out), "--workers", "2", *extra])


def read(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))


def assert_loads(sources: dict[str, ProductSource], tokenizer: str, val: ProductSource | None = None) -> None:
    """The real DataModule reads the converted folder and yields a training batch."""
    dm = ProductDataModule(
        train_sources=sources,
        val_source=val,
        tokenizer=tokenizer,
        train_transform=resize_crop(True, size=16, resize=20),
        eval_transform=resize_crop(False, size=16, resize=20),
        max_text_length=24,
        batch_size=2,
        num_workers=0,
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[:2] == (2, 3) and batch["input_ids"].shape[0] == 2
    if val is not None:
        assert next(iter(dm.val_dataloader()))["image"].shape[1] == 3


def assert_check_passes(out: Path) -> None:
    assert main(["check", str(out), "--workers", "2"]) == 0


def assert_no_partial(out: Path, folder: str) -> None:
    leftovers = [p.name for p in out.iterdir()] if out.exists() else []
    assert not [n for n in leftovers if n == folder or n.startswith(f".{folder}.")], leftovers


# --------------------------------------------------------------------------- FashionGen


@pytest.mark.parametrize(
    ("dataset", "needle"),
    [("fashiongen", "fashiongen_256_256_train.h5"), ("fashion200k", "detect_all"), ("bigfacad", "JSON")],
)
def test_help_states_the_assumed_layout(dataset: str, needle: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", dataset, "-h"])
    assert exit_info.value.code == 0 and needle in capsys.readouterr().out


def test_fashiongen_converts_official_hdf5(
    fashiongen_raw: Path, tmp_path: Path, tokenizer_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fashiongen, "CHUNK_ROWS", 3)  # products straddle chunks, as in the real files
    out = tmp_path / "datasets"
    assert prepare("fashiongen", fashiongen_raw, out) == 0
    root = out / "FashionGen"
    mapping = read(root / "categories.json")
    names = {r[3].decode() for rows in FASHIONGEN_ROWS.values() for r in rows}
    assert list(mapping["category"]) == sorted(names)  # one sorted mapping over both splits
    train, val = read(root / "train_info.json"), read(root / "val_info.json")
    assert [e["id"] for e in train] == [100123, 100124, 100125]
    assert [e["id"] for e in val] == [200001, 200002, 200003]
    shirt = train[1]
    assert set(shirt) == {
        "images",
        "id",
        "title",
        "description",
        "attributes_id",
        "category_id",
        "subcategory_id",
    }
    assert shirt["images"] == ["100124_1.png", "100124_2.png"]  # pose order, not row order
    assert shirt["title"] == "Café silk shirt"
    assert shirt["description"] == "Silk shirt in café au lait – relaxed fit."  # cp1252 en dash
    assert shirt["attributes_id"] == []
    assert shirt["category_id"] == mapping["category"]["SHIRTS"]
    assert shirt["subcategory_id"] == mapping["subcategory"]["SHIRTS"]
    assert train[0]["category_id"] == val[2]["category_id"]  # same name, same id across splits
    assert len(list((root / "train").glob("*.png"))) == 6 and len(list((root / "val").glob("*.png"))) == 6
    with Image.open(root / "train" / "100123_1.png") as img:
        assert img.size == (32, 32) and img.mode == "RGB"
    assert_loads({"fashiongen": FashionGenSource(out, "train")}, tokenizer_dir, FashionGenSource(out, "val"))
    assert_check_passes(out)


def test_fashiongen_array_store_holds_the_png_pixels(
    fashiongen_raw: Path, tmp_path: Path, tokenizer_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fashion_vl.data.images import read_image

    monkeypatch.setattr(fashiongen, "CHUNK_ROWS", 4)  # the store is filled chunk by chunk
    out = tmp_path / "datasets"
    assert prepare("fashiongen", fashiongen_raw, out, "--image-store", "both") == 0
    for split in ("train", "val"):
        table = FashionGenSource(out, split).read(image_store="array")
        names = [n for p in table.products for n in p.images]
        assert len(table.store) == len(names) == 6
        for name in names:
            assert torch.equal(table.store.load(name), read_image(table.image_dir / name)), name
    only = tmp_path / "array_only"
    assert prepare("fashiongen", fashiongen_raw, only, "--image-store", "array") == 0
    assert not (only / "FashionGen" / "train").exists()
    assert read(only / "FashionGen" / "train_info.json") == read(out / "FashionGen" / "train_info.json")
    assert_check_passes(only)
    dm = ProductDataModule(
        train_sources={"fashiongen": FashionGenSource(only, "train")},
        tokenizer=tokenizer_dir,
        train_transform=resize_crop(True, size=16, resize=20),
        eval_transform=resize_crop(False, size=16, resize=20),
        batch_size=2,
        num_workers=0,
        image_store="array",
    )
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["image"].shape == (2, 3, 16, 16)


def test_fashiongen_missing_dataset_names_file_and_key(
    fashiongen_raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    write_fashiongen_h5(
        fashiongen_raw / "fashiongen_256_256_validation.h5", FASHIONGEN_ROWS["val"], drop="input_pose"
    )
    out = tmp_path / "datasets"
    assert prepare("fashiongen", fashiongen_raw, out) == 2
    err = capsys.readouterr().err
    assert "fashiongen_256_256_validation.h5" in err and "input_pose" in err
    assert_no_partial(out, "FashionGen")


def test_fashiongen_missing_file_and_overrides(
    fashiongen_raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "datasets"
    (fashiongen_raw / "fashiongen_256_256_validation.h5").rename(fashiongen_raw / "valid.h5")
    assert prepare("fashiongen", fashiongen_raw, out) == 2
    err = capsys.readouterr().err
    assert "fashiongen_256_256_validation.h5" in err and "--val-file" in err
    assert_no_partial(out, "FashionGen")
    assert prepare("fashiongen", fashiongen_raw, out, "--val-file", "valid.h5") == 0
    assert len(read(out / "FashionGen" / "val_info.json")) == 3


def test_fashiongen_without_h5py_says_how_to_install(
    fashiongen_raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "h5py", None)  # `import h5py` now raises ImportError
    assert prepare("fashiongen", fashiongen_raw, tmp_path / "datasets") == 2
    assert "pip install 'fashion-vl[prepare]'" in capsys.readouterr().err


# --------------------------------------------------------------------------- Fashion200k


def test_fashion200k_groups_images_by_product_folder(
    fashion200k_raw: Path, tmp_path: Path, tokenizer_dir: str
) -> None:
    out = tmp_path / "datasets"
    assert prepare("fashion200k", fashion200k_raw, out) == 0
    root = out / "Fashion200k"
    assert not (root / "val_info.json").exists()
    train = {e["id"]: e for e in read(root / "train_info.json")}
    assert sorted(train) == [30000001, 40000001, 51727804]
    dress = train[51727804]
    assert set(dress) == {"images", "id", "title", "attributes_id"}
    assert dress["title"] == "black sleeveless a-line dress"  # the most common description
    assert dress["images"] == [
        f"women/dresses/casual_and_day_dresses/51727804/51727804_{k}.jpeg" for k in range(3)
    ]
    assert train[30000001]["images"][0].endswith("30000001_0.jpeg")  # image order, not line order
    assert [e["id"] for e in read(root / "test_info.json")] == [60000001]
    assert (root / "images" / dress["images"][0]).is_file()
    assert_loads({"fashion200k": Fashion200kSource(out, "train")}, tokenizer_dir)
    assert_check_passes(out)


def test_fashion200k_missing_image_skipped_or_strict(
    fashion200k_raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    missing = fashion200k_raw / F200K_LABELS["dress_train"][3][0]
    missing.unlink()
    out = tmp_path / "datasets"
    assert prepare("fashion200k", fashion200k_raw, out, "--strict") == 2
    assert str(missing) in capsys.readouterr().err
    assert_no_partial(out, "Fashion200k")
    assert prepare("fashion200k", fashion200k_raw, out, "--link", "symlink") == 0
    train = read(out / "Fashion200k" / "train_info.json")
    assert 40000001 not in {e["id"] for e in train}  # its only image is gone
    assert (out / "Fashion200k" / "images" / train[0]["images"][0]).is_symlink()
    assert_check_passes(out)


def test_fashion200k_bad_line_and_missing_labels(
    fashion200k_raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "datasets"
    assert prepare("fashion200k", tmp_path / "nowhere", out) == 2
    assert "labels" in capsys.readouterr().err
    with (fashion200k_raw / "labels" / "top_train_detect_all.txt").open("w") as f:
        f.write("women/tops/blouses/123/123_0.jpeg\t0.9\tsilk blouse\n")
        f.write("women/tops/blouses/no_id/x_0.jpeg\t0.9\tsilk blouse\n")
    assert prepare("fashion200k", fashion200k_raw, out) == 2
    err = capsys.readouterr().err
    assert "top_train_detect_all.txt, line 2" in err and "image path" in err
    assert_no_partial(out, "Fashion200k")


# --------------------------------------------------------------------------- BigFACAD


def test_bigfacad_jsonl(bigfacad_raw: Path, tmp_path: Path, tokenizer_dir: str) -> None:
    out = tmp_path / "datasets"
    assert prepare("bigfacad", bigfacad_raw / "products.jsonl", out) == 0
    root = out / "BigFACAD"
    train, val = read(root / "train_info.json"), read(root / "val_info.json")
    assert [e["id"] for e in train] == [2231, 5] and [e["id"] for e in val] == [2232]
    assert train[0] == {
        "images": ["a81/2231_0.jpg", "a81/2231_1.jpg"],
        "id": 2231,
        "color": "navy",
        "title": "Cotton crewneck sweater",
        "description": "a soft knit sweater with ribbed trims",
        "attributes_id": [],
    }
    assert (root / "images" / "a81" / "2231_1.jpg").is_file()
    assert_loads({"bigfacad": BigFACADSource(out, "train")}, tokenizer_dir, BigFACADSource(out, "val"))
    assert_check_passes(out)


def test_bigfacad_csv_assigns_missing_ids(bigfacad_raw: Path, tmp_path: Path) -> None:
    table = bigfacad_raw / "products.csv"
    with table.open("w", newline="") as f:
        writer = csv.DictWriter(f, ["images", "title", "description", "color", "split"])
        writer.writeheader()
        for row in BIGFACAD_ROWS:
            writer.writerow({k: ";".join(v) if k == "images" else v for k, v in row.items() if k != "id"})
    out = tmp_path / "datasets"
    assert prepare("bigfacad", table, out, "--images", str(bigfacad_raw), "--link", "hardlink") == 0
    train = read(out / "BigFACAD" / "train_info.json")
    assert [e["id"] for e in train] == [0, 2] and train[0]["images"] == ["a81/2231_0.jpg", "a81/2231_1.jpg"]
    assert [e["id"] for e in read(out / "BigFACAD" / "val_info.json")] == [1]
    assert_check_passes(out)


def test_bigfacad_missing_field_names_file_line_and_field(
    bigfacad_raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rows = [dict(r) for r in BIGFACAD_ROWS]
    del rows[1]["title"]
    table = bigfacad_raw / "broken.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "datasets"
    assert prepare("bigfacad", table, out) == 2
    err = capsys.readouterr().err
    assert f"{table}, line 2" in err and "'title'" in err
    assert_no_partial(out, "BigFACAD")


def test_overwrite_semantics(bigfacad_raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "datasets"
    table = bigfacad_raw / "products.jsonl"
    assert prepare("bigfacad", table, out) == 0
    table.write_text(json.dumps(BIGFACAD_ROWS[0]) + "\n")
    assert prepare("bigfacad", table, out) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert len(read(out / "BigFACAD" / "train_info.json")) == 2  # untouched
    assert prepare("bigfacad", table, out, "--overwrite") == 0
    assert [e["id"] for e in read(out / "BigFACAD" / "train_info.json")] == [2231]
    assert not (out / "BigFACAD" / "val_info.json").exists()  # replaced, not merged
    assert not (out / "BigFACAD" / "images" / "a83").exists()
    assert sorted(p.name for p in out.iterdir()) == ["BigFACAD"]
