"""Catalogues to index: a data folder in our layout, or a CSV / JSON-lines table of ``id,image,text``.

A catalogue is a list of items (one image and one text each) plus the rows that could not become an
item (``skipped``: no id, no image, a duplicate id, an unparsable line). Structural faults that make
the whole file unreadable (no such file, a CSV without an ``id`` or ``image`` column) are errors
naming the file; faults of one row skip that row and list it, so one bad line never stops a build.
Whether an image decodes is checked later, by the build, which skips and lists those rows too.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fashion_vl.data.formats import (
    BigFACADSource,
    Fashion200kSource,
    FashionGenSource,
    PolyvoreItemSource,
    ProductSource,
    read_polyvore_metadata,
)

# dataset folder name -> its product source (the datasets whose products have an image and a text)
PRODUCT_SOURCES: dict[str, type[ProductSource]] = {
    s.dataset: s for s in (FashionGenSource, BigFACADSource, Fashion200kSource, PolyvoreItemSource)
}
TABLE_FIELDS = ("id", "image", "text")
# an item's category id for outfit completion (a Polyvore-trained CSA-Net's 0..152), in its metadata
OUTFIT_CATEGORY = "outfit_category"


class CatalogueError(ValueError):
    """A catalogue file or folder cannot be read at all (one bad row is skipped instead)."""


@dataclass(frozen=True)
class CatalogueItem:
    """One indexable item: ``image`` is an absolute path; ``meta`` holds the other fields of its row."""

    id: str
    image: str
    text: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    where: str = ""  # the catalogue file and line (or entry) it came from, for messages


@dataclass(frozen=True)
class SkippedRow:
    """A catalogue row left out of the index, and why (``where`` names the file and line or entry)."""

    where: str
    reason: str
    id: str | None = None
    image: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"where": self.where, "id": self.id, "image": self.image, "reason": self.reason}


@dataclass
class Catalogue:
    source: str
    items: list[CatalogueItem]
    skipped: list[SkippedRow] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def fingerprint(self) -> str:
        """A hash of every item's id, image path and text, in order: a resumed build checks it."""
        h = hashlib.sha256()
        for item in self.items:
            h.update(json.dumps([item.id, item.image, item.text]).encode())
        return h.hexdigest()


def read_catalogue(
    source: str | Path,
    *,
    dataset: str = "FashionGen",
    splits: Iterable[str] = ("train", "val"),
    image_root: str | Path | None = None,
) -> Catalogue:
    """The catalogue at ``source``: a data folder (``dataset``'s ``splits``, one item per product with
    its first image), a ``.csv`` or a ``.jsonl`` table (image paths relative to ``image_root``,
    default the table's folder)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return read_data_folder(path, dataset=dataset, splits=splits)
    if not path.is_file():
        raise CatalogueError(f"catalogue not found: {path} (a data folder, a .csv or a .jsonl file)")
    root = Path(image_root).expanduser() if image_root is not None else path.parent
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _csv_rows(path)
    elif suffix in (".jsonl", ".ndjson"):
        rows = _jsonl_rows(path)
    else:
        raise CatalogueError(
            f"{path}: unknown catalogue format '{suffix}' (use .csv, .jsonl or a data folder)"
        )
    return _table_catalogue(str(path.resolve()), rows, root)


def read_data_folder(data_dir: Path, *, dataset: str, splits: Iterable[str]) -> Catalogue:
    """Products of ``dataset`` under ``data_dir`` (our layout: ``<data_dir>/FashionGen/...``)."""
    if dataset not in PRODUCT_SOURCES:
        raise CatalogueError(f"--dataset: '{dataset}' is not one of {sorted(PRODUCT_SOURCES)}")
    if not (data_dir / dataset).is_dir():
        raise CatalogueError(
            f"{data_dir}: no {dataset}/ folder (a data folder has one sub-folder per dataset; "
            f"`fvl-data synth --out {data_dir}` writes one)"
        )
    items: list[CatalogueItem] = []
    skipped: list[SkippedRow] = []
    seen: set[str] = set()
    # Polyvore items carry their category for outfit completion (polyvore_item_metadata.json)
    polyvore = dataset == PolyvoreItemSource.dataset
    has_categories = polyvore and (data_dir / dataset / "polyvore_item_metadata.json").is_file()
    outfit_categories = read_polyvore_metadata(data_dir) if has_categories else {}
    for split in splits:
        table = PRODUCT_SOURCES[dataset](data_dir, split).read()
        for i, product in enumerate(table.products):
            where = f"{table.annotation_path}: entry {i}"
            item_id = str(product.id)
            image = str((table.image_dir / product.images[0]).resolve())
            if item_id in seen:
                skipped.append(SkippedRow(where, f"duplicate id {item_id}", item_id, image))
                continue
            seen.add(item_id)
            meta = {"dataset": dataset, "split": split}
            if product.category_id >= 0:
                meta |= {"category_id": product.category_id, "subcategory_id": product.subcategory_id}
            if product.id in outfit_categories:
                meta[OUTFIT_CATEGORY] = outfit_categories[product.id]
            items.append(CatalogueItem(item_id, image, product.text, meta, where))
    return Catalogue(str(data_dir.resolve()), items, skipped)


def _csv_rows(path: Path) -> Iterator[tuple[str, dict[str, Any] | str]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in TABLE_FIELDS[:2] if c not in (reader.fieldnames or [])]
        if missing:
            raise CatalogueError(
                f"{path}: the header has no column {', '.join(map(repr, missing))} "
                f"(found {reader.fieldnames}); a catalogue CSV needs id,image and optionally text"
            )
        for row in reader:
            yield f"{path}: line {reader.line_num}", row


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict[str, Any] | str]]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}: line {n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                yield where, f"not valid JSON ({err.msg})"
                continue
            yield where, row if isinstance(row, dict) else f"a JSON {type(row).__name__}, not an object"


def _table_catalogue(source: str, rows: Iterable[tuple[str, dict[str, Any] | str]], root: Path) -> Catalogue:
    items: list[CatalogueItem] = []
    skipped: list[SkippedRow] = []
    seen: set[str] = set()
    for where, row in rows:
        if isinstance(row, str):  # the row could not be parsed; the string says why
            skipped.append(SkippedRow(where, row))
            continue
        item_id = _cell(row.get("id"))
        image = _cell(row.get("image"))
        text = row.get("text")
        if not item_id:
            skipped.append(SkippedRow(where, "field 'id' is missing or empty", None, image or None))
        elif not image:
            skipped.append(SkippedRow(where, "field 'image' is missing or empty", item_id))
        elif text is not None and not isinstance(text, str):
            skipped.append(SkippedRow(where, f"field 'text' should be a string, found {text!r:.40}", item_id))
        elif item_id in seen:
            skipped.append(SkippedRow(where, f"duplicate id {item_id}", item_id, image))
        elif _outfit_category(row) is False:
            reason = f"field '{OUTFIT_CATEGORY}' should be an integer, found {row[OUTFIT_CATEGORY]!r:.40}"
            skipped.append(SkippedRow(where, reason, item_id, image))
        else:
            seen.add(item_id)
            meta = {k: v for k, v in row.items() if k not in TABLE_FIELDS and k is not None}
            category = _outfit_category(row)
            if category is None:
                meta.pop(OUTFIT_CATEGORY, None)  # an empty CSV cell: no category
            else:
                meta[OUTFIT_CATEGORY] = category
            path = str((root / image).resolve())
            items.append(CatalogueItem(item_id, path, text or "", meta, where))
    return Catalogue(source, items, skipped)


def _outfit_category(row: dict[str, Any]) -> int | bool | None:
    """The row's outfit category as an int; None when absent or empty; False when not an integer."""
    value = row.get(OUTFIT_CATEGORY)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return False


def _cell(value: Any) -> str:
    """An id or path cell as a string: JSON numbers are accepted as ids; other types are not."""
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, int | str):
        return str(value).strip()
    return ""
