"""Catalogue readers: a data folder in our layout, CSV and JSON-lines tables; a bad row is skipped
and listed with its file and line, a file that cannot be read at all is an error naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fashion_vl.search.catalogue import CatalogueError, read_catalogue


def test_data_folder_gives_one_item_per_product_with_its_first_image(fixture_data: Path) -> None:
    catalogue = read_catalogue(fixture_data)
    train = json.loads((fixture_data / "FashionGen" / "train_info.json").read_text())
    val = json.loads((fixture_data / "FashionGen" / "val_info.json").read_text())
    assert [it.id for it in catalogue.items] == [str(p["id"]) for p in train + val]
    first = catalogue.items[0]
    assert first.image == str((fixture_data / "FashionGen" / "train" / train[0]["images"][0]).resolve())
    assert first.text == f"{train[0]['title']}. {train[0]['description'].rstrip('.')}"
    assert first.meta == {"dataset": "FashionGen", "split": "train", "category_id": 20, "subcategory_id": 57}
    assert first.where.endswith("train_info.json: entry 0")
    only_val = read_catalogue(fixture_data, splits=["val"])
    assert [it.id for it in only_val.items] == [str(p["id"]) for p in val]
    assert len(read_catalogue(fixture_data, dataset="BigFACAD", splits=["train"])) > 0


def test_data_folder_errors_name_what_is_wrong(tmp_path: Path, fixture_data: Path) -> None:
    with pytest.raises(CatalogueError, match="no FashionGen/ folder"):
        read_catalogue(tmp_path)
    with pytest.raises(CatalogueError, match="--dataset: 'Shoes'"):
        read_catalogue(fixture_data, dataset="Shoes")
    with pytest.raises(CatalogueError, match="catalogue not found"):
        read_catalogue(tmp_path / "nothing.csv")
    (tmp_path / "c.parquet").write_text("")
    with pytest.raises(CatalogueError, match="unknown catalogue format"):
        read_catalogue(tmp_path / "c.parquet")


def test_csv_rows_extra_columns_and_bad_rows(tmp_path: Path) -> None:
    csv = tmp_path / "shop" / "catalogue.csv"
    csv.parent.mkdir()
    csv.write_text(
        "id,image,text,price\n"
        "a1,img/a1.jpg,Red dress,30\n"
        ",img/x.jpg,no id,1\n"
        "a2,,no image,2\n"
        "a1,img/dup.jpg,same id again,3\n"
        'a3,img/a3.jpg,"Blue, wool, coat",4\n'
    )
    catalogue = read_catalogue(csv)
    assert [(it.id, it.text, it.meta) for it in catalogue.items] == [
        ("a1", "Red dress", {"price": "30"}),
        ("a3", "Blue, wool, coat", {"price": "4"}),
    ]
    assert catalogue.items[0].image == str((csv.parent / "img" / "a1.jpg").resolve())
    assert [(s.where.rsplit(": ", 1)[1], s.reason) for s in catalogue.skipped] == [
        ("line 3", "field 'id' is missing or empty"),
        ("line 4", "field 'image' is missing or empty"),
        ("line 5", "duplicate id a1"),
    ]
    other_root = read_catalogue(csv, image_root=tmp_path / "pictures")
    assert other_root.items[0].image == str((tmp_path / "pictures" / "img" / "a1.jpg").resolve())


def test_csv_without_an_image_column_is_an_error(tmp_path: Path) -> None:
    csv = tmp_path / "c.csv"
    csv.write_text("id,picture\n1,a.jpg\n")
    with pytest.raises(CatalogueError, match=r"c.csv: the header has no column 'image'"):
        read_catalogue(csv)


def test_jsonl_rows_and_bad_lines(tmp_path: Path) -> None:
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text(
        '{"id": 7, "image": "7.png", "text": "green shirt", "category": "tops"}\n'
        "\n"
        "{broken\n"
        "[1, 2]\n"
        '{"id": 8, "image": "8.png", "text": ["not", "a", "string"]}\n'
        '{"id": 9, "image": "9.png"}\n'
    )
    catalogue = read_catalogue(jsonl)
    assert [(it.id, it.text, it.meta) for it in catalogue.items] == [
        ("7", "green shirt", {"category": "tops"}),
        ("9", "", {}),
    ]
    reasons = [(s.where.rsplit(": ", 1)[1], s.reason.split(" (")[0]) for s in catalogue.skipped]
    assert reasons == [
        ("line 3", "not valid JSON"),
        ("line 4", "a JSON list, not an object"),
        ("line 5", "field 'text' should be a string, found ['not', 'a', 'string']"),
    ]


def test_fingerprint_follows_ids_images_and_texts(tmp_path: Path) -> None:
    csv = tmp_path / "c.csv"
    csv.write_text("id,image,text\n1,a.jpg,red\n2,b.jpg,blue\n")
    before = read_catalogue(csv).fingerprint()
    assert read_catalogue(csv).fingerprint() == before
    csv.write_text("id,image,text\n1,a.jpg,red\n2,b.jpg,navy\n")
    assert read_catalogue(csv).fingerprint() != before
