"""Format readers on hand-written fixtures in the reference's formats (not only synthetic output)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fashion_vl.data.formats import (
    POLYVORE_RAW_CATEGORY_IDS,
    BigFACADSource,
    DataFormatError,
    Fashion200kSource,
    FashionGenSource,
    MissingDataFileError,
    PolyvoreItemSource,
    read_fashioniq,
    read_ocir,
    read_polyvore_metadata,
)


def test_fashiongen_reader(fixture_data: Path) -> None:
    table = FashionGenSource(fixture_data, "train").read()
    assert table.image_dir == fixture_data / "FashionGen" / "train"
    assert [p.id for p in table.products] == [100123, 100124, 100125]
    blazer = table.products[0]
    assert blazer.images == ("100123_0.png", "100123_1.png")
    assert (
        blazer.text
        == "Black wool blazer. Long sleeve wool blazer in black. Notched lapel. Two-button closure"
    )
    assert blazer.attributes == (12, 87, 1530)
    assert (blazer.category_id, blazer.subcategory_id) == (20, 57)
    # FashionGen's test split is its val split, as in the reference
    test = FashionGenSource(fixture_data, "test").read()
    assert test.annotation_path.name == "val_info.json" and test.image_dir.name == "val"


def test_bigfacad_text_is_colour_title_description(fixture_data: Path) -> None:
    product = BigFACADSource(fixture_data, "train").read().products[0]
    assert product.text == "navy. Cotton crewneck sweater. a soft knit sweater with ribbed trims"
    assert product.images == ("a81/2231_0.jpg", "a81/2231_1.jpg")


def test_fashion200k_text_is_title_only(fixture_data: Path) -> None:
    products = Fashion200kSource(fixture_data, "train").read().products
    assert products[1].text == "blue sleeveless a-line dress"
    assert len(products[1].images) == 2
    with pytest.raises(ValueError, match=r"no val split|splits"):
        Fashion200kSource(fixture_data, "val")


def test_polyvore_items_wrap_single_image_string(fixture_data: Path) -> None:
    product = PolyvoreItemSource(fixture_data).read().products[0]
    assert product.images == ("154249722.jpg",)
    assert product.text == "Gucci leather loafers. horsebit detail"


def test_fashioniq_reader_train_and_val(fixture_data: Path) -> None:
    train = read_fashioniq(fixture_data, "dress", "train")
    assert train[0].candidate == "B00A0I7X6S" and train[0].captions == (
        "is darker and shorter",
        "has no sleeves",
    )
    assert train[0].target_id == -1 and not train[0].fake_data
    val = read_fashioniq(fixture_data, "dress", "val")
    assert (val[0].target_id, val[0].fake_data, val[0].garment_class) == (4031, False, 0)
    assert val[1].fake_data and val[1].candidate == val[1].target
    assert read_fashioniq(fixture_data, "dress", "test") == val


def test_polyvore_ocir_and_metadata(fixture_data: Path) -> None:
    train = read_ocir(fixture_data, "disjoint", "train")
    assert train[0].question == (154249722, 183214649, 181559193) and train[0].blank == 181776624
    test = read_ocir(fixture_data, "disjoint", "test")
    assert [q.fake_data for q in test] == [False, True]
    meta = read_polyvore_metadata(fixture_data)
    # raw Polyvore category ids map to the reference's contiguous indices (11 -> 8, 4452 -> 130)
    assert meta[154249722] == 8 and meta[183214649] == 130 and meta[181559193] == 0
    assert len(POLYVORE_RAW_CATEGORY_IDS) == len(set(POLYVORE_RAW_CATEGORY_IDS)) == 153


def test_missing_file_error_names_path_and_command(tmp_path: Path) -> None:
    with pytest.raises(MissingDataFileError) as err:
        FashionGenSource(tmp_path, "train").read()
    message = str(err.value)
    assert str(tmp_path / "FashionGen" / "train_info.json") in message
    assert "fvl-data synth" in message and "fvl-data prepare fashiongen" in message


def _rewrite(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_missing_field_error_names_file_entry_and_field(fixture_data: Path) -> None:
    path = fixture_data / "FashionGen" / "train_info.json"
    _rewrite(path, lambda d: d[1].pop("subcategory_id"))
    with pytest.raises(DataFormatError) as err:
        FashionGenSource(fixture_data, "train").read()
    message = str(err.value)
    assert str(path) in message and "entry 1" in message and "id=100124" in message
    assert "'subcategory_id' is missing" in message


def test_wrong_type_is_reported(fixture_data: Path) -> None:
    _rewrite(fixture_data / "BigFACAD" / "train_info.json", lambda d: d[0].update(attributes_id="4,311"))
    with pytest.raises(DataFormatError, match="'attributes_id' should be list\\[int\\]"):
        BigFACADSource(fixture_data, "train").read()


def test_duplicate_product_id_is_reported(fixture_data: Path) -> None:
    _rewrite(fixture_data / "FashionGen" / "val_info.json", lambda d: d[1].update(id=200001))
    with pytest.raises(DataFormatError, match="duplicate product id 200001"):
        FashionGenSource(fixture_data, "val").read()


def test_val_only_fields_are_required_in_val(fixture_data: Path) -> None:
    _rewrite(fixture_data / "FashionIQ" / "captions" / "cap.dress.val.json", lambda d: d[0].pop("target_id"))
    with pytest.raises(DataFormatError, match="'target_id' is missing"):
        read_fashioniq(fixture_data, "dress", "val")


def test_unknown_polyvore_category_is_reported(fixture_data: Path) -> None:
    _rewrite(
        fixture_data / "PolyvoreOutfits" / "polyvore_item_metadata.json",
        lambda d: d["154249722"].update(category_id="12"),
    )
    with pytest.raises(DataFormatError, match="not one of the 153 Polyvore categories"):
        read_polyvore_metadata(fixture_data)


def test_not_a_list_is_reported(fixture_data: Path) -> None:
    (fixture_data / "Fashion200k" / "train_info.json").write_text('{"images": []}')
    with pytest.raises(DataFormatError, match="expected a JSON list"):
        Fashion200kSource(fixture_data, "train").read()
