"""FashionIQ: ``FashionIQ/captions/cap.<category>.<split>.json``, images ``FashionIQ/images/<asin>.jpg``.

Val entries carry three more fields: ``target_id`` (unique per target image), ``fake_data`` (the
entry only adds its target to the gallery) and ``garment_class`` (0 dress, 1 shirt, 2 toptee).
Split ``test`` reads the val files, as the reference does.
"""

from __future__ import annotations

from pathlib import Path

from fashion_vl.data.formats._json import DataFormatError, get_field, load_entries
from fashion_vl.data.records import FashionIQTriplet

FASHIONIQ_CATEGORIES = ("dress", "shirt", "toptee")


def fashioniq_caption_path(data_dir: Path, category: str, split: str) -> Path:
    split = "val" if split == "test" else split
    return Path(data_dir) / "FashionIQ" / "captions" / f"cap.{category}.{split}.json"


def fashioniq_image_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "FashionIQ" / "images"


def read_fashioniq(data_dir: str | Path, category: str, split: str) -> list[FashionIQTriplet]:
    if category not in FASHIONIQ_CATEGORIES:
        raise ValueError(f"FashionIQ category must be one of {FASHIONIQ_CATEGORIES}, not '{category}'")
    data_dir = Path(data_dir).expanduser()
    path = fashioniq_caption_path(data_dir, category, split)
    entries = load_entries(path, dataset="FashionIQ", data_dir=data_dir)
    is_val = split in ("val", "test")
    out = []
    for i, e in enumerate(entries):
        captions = tuple(get_field(e, "captions", "list[str]", path, i))
        if not captions:
            raise DataFormatError(f"{path}: entry {i}: field 'captions' is empty")
        extra = {}
        if is_val:
            extra = dict(
                target_id=get_field(e, "target_id", "int", path, i),
                fake_data=get_field(e, "fake_data", "bool", path, i),
                garment_class=get_field(e, "garment_class", "int", path, i),
            )
        out.append(
            FashionIQTriplet(
                candidate=get_field(e, "candidate", "str", path, i),
                target=get_field(e, "target", "str", path, i),
                captions=captions,
                category=category,
                **extra,
            )
        )
    return out
