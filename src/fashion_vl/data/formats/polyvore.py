"""Polyvore Outfits OCIR: ``PolyvoreOutfits/ocir_<variant>_<split>.json`` + ``polyvore_item_metadata.json``.

Item ids are digit strings. The metadata maps item id to an object whose ``category_id`` is one of
Polyvore's raw category ids; :data:`POLYVORE_RAW_CATEGORY_IDS` lists the 153 the reference maps, in
the order of their contiguous index (index = position).
"""

from __future__ import annotations

from pathlib import Path

from fashion_vl.data.formats._json import DataFormatError, get_field, load_entries, load_json
from fashion_vl.data.records import OutfitQuestion

# Raw Polyvore category id at each contiguous index 0..152 (the reference's CAT_DICT, as data).
POLYVORE_RAW_CATEGORY_IDS: tuple[int, ...] = (
    3, 4, 5, 6, 7, 8, 9, 10, 11, 15, 17, 18, 19, 21, 23, 24, 25, 26, 27, 28, 29, 30, 31, 35, 36, 37, 38,
    39, 40, 41, 42, 43, 46, 47, 48, 49, 50, 51, 52, 53, 55, 56, 57, 58, 59, 61, 62, 64, 65, 68, 69, 1606,
    1607, 1605, 104, 105, 106, 107, 231, 236, 237, 238, 239, 240, 241, 243, 244, 248, 249, 250, 251, 252,
    253, 254, 255, 256, 257, 258, 259, 260, 261, 262, 263, 264, 265, 266, 267, 268, 269, 270, 272, 273,
    275, 277, 278, 279, 280, 281, 282, 284, 286, 287, 288, 289, 290, 291, 292, 293, 294, 295, 296, 297,
    298, 299, 300, 301, 302, 303, 304, 305, 306, 307, 309, 310, 315, 318, 332, 341, 342, 343, 4452, 4454,
    4455, 4456, 4457, 4458, 4459, 4460, 4461, 4462, 4463, 4464, 4465, 4466, 4467, 4468, 4470, 4472, 4473,
    4495, 4496, 4517, 4518,
)  # fmt: skip
POLYVORE_CATEGORY_INDEX = {raw: i for i, raw in enumerate(POLYVORE_RAW_CATEGORY_IDS)}
OCIR_VARIANTS = ("disjoint", "nondisjoint")


def polyvore_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "PolyvoreOutfits"


def _item_id(value: str, path: Path, index: int, name: str) -> int:
    if not value.isdigit():
        raise DataFormatError(f"{path}: entry {index}: '{name}' item id {value!r} is not a digit string")
    return int(value)


def read_ocir(data_dir: str | Path, variant: str, split: str) -> list[OutfitQuestion]:
    if variant not in OCIR_VARIANTS:
        raise ValueError(f"Polyvore OCIR variant must be one of {OCIR_VARIANTS}, not '{variant}'")
    data_dir = Path(data_dir).expanduser()
    path = polyvore_dir(data_dir) / f"ocir_{variant}_{split}.json"
    entries = load_entries(path, dataset="PolyvoreOutfits", data_dir=data_dir)
    out = []
    for i, e in enumerate(entries):
        question = get_field(e, "question", "list[str]", path, i)
        out.append(
            OutfitQuestion(
                question=tuple(_item_id(q, path, i, "question") for q in question),
                blank=_item_id(get_field(e, "blank", "str", path, i), path, i, "blank"),
                fake_data=get_field(e, "fake_data", "bool", path, i) if split == "test" else False,
            )
        )
    return out


def read_polyvore_metadata(data_dir: str | Path) -> dict[int, int]:
    """Item id to contiguous category index (0..152)."""
    data_dir = Path(data_dir).expanduser()
    path = polyvore_dir(data_dir) / "polyvore_item_metadata.json"
    meta = load_json(path, dataset="PolyvoreOutfits", data_dir=data_dir)
    if not isinstance(meta, dict):
        raise DataFormatError(f"{path}: expected an object mapping item id to metadata")
    out = {}
    for item, info in meta.items():
        if not isinstance(info, dict) or "category_id" not in info:
            raise DataFormatError(f"{path}: item {item!r}: required field 'category_id' is missing")
        try:
            raw = int(info["category_id"])
        except (TypeError, ValueError):
            raise DataFormatError(
                f"{path}: item {item!r}: 'category_id' {info['category_id']!r} is not an integer"
            ) from None
        if raw not in POLYVORE_CATEGORY_INDEX:
            raise DataFormatError(
                f"{path}: item {item!r}: 'category_id' {raw} is not one of the 153 Polyvore categories"
            )
        out[_item_id(str(item), path, 0, "metadata key")] = POLYVORE_CATEGORY_INDEX[raw]
    return out
