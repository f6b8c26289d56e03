"""Product-level datasets: FashionGen, BigFACAD, Fashion200k and Polyvore Outfits items.

A *source* names one split of one dataset under a data folder and reads it on demand, so Hydra can
instantiate sources in a config without touching the disk. The text of each product follows the
reference loader: FashionGen ``title . description``; BigFACAD ``color . title . description``;
Fashion200k ``title``; Polyvore ``title . description``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from fashion_vl.data.formats._json import DataFormatError, get_field, load_entries
from fashion_vl.data.records import Product, ProductTable


def join_text(*parts: str) -> str:
    """Sentences joined by '. ' (WordPiece splits on the full stop either way)."""
    return ". ".join(p.strip().rstrip(".") for p in parts if p and p.strip())


class ProductSource(ABC):
    """One split of a product-level dataset under ``data_dir``.

    Args:
        data_dir: the ``datasets/`` folder (``<data_dir>/FashionGen/train_info.json``, ...).
        split: the split name; each source documents the ones it has.
    """

    dataset: ClassVar[str]
    splits: ClassVar[tuple[str, ...]]

    def __init__(self, data_dir: str | Path, split: str = "train") -> None:
        if split not in self.splits:
            raise ValueError(f"{self.dataset} has splits {self.splits}, not '{split}'")
        self.data_dir = Path(data_dir).expanduser()
        self.split = split

    def __repr__(self) -> str:
        return f"{type(self).__name__}(data_dir={str(self.data_dir)!r}, split={self.split!r})"

    @property
    def root(self) -> Path:
        return self.data_dir / self.dataset

    @abstractmethod
    def annotation_path(self) -> Path: ...

    @abstractmethod
    def image_dir(self) -> Path: ...

    @abstractmethod
    def parse(self, entry: dict[str, Any], path: Path, index: int) -> Product: ...

    def read(self) -> ProductTable:
        path = self.annotation_path()
        entries = load_entries(path, dataset=self.dataset, data_dir=self.data_dir)
        products = [self.parse(entry, path, i) for i, entry in enumerate(entries)]
        seen: set[int] = set()
        for i, p in enumerate(products):
            if p.id in seen:
                raise DataFormatError(f"{path}: entry {i}: duplicate product id {p.id}")
            seen.add(p.id)
            if not p.images:
                raise DataFormatError(f"{path}: entry {i} (id={p.id}): field 'images' is empty")
        return ProductTable(self.dataset, self.split, self.image_dir(), path, products)


def _attributes(entry: dict[str, Any], path: Path, index: int) -> tuple[int, ...]:
    attributes = tuple(get_field(entry, "attributes_id", "list[int]", path, index))
    if any(a < 0 for a in attributes):
        raise DataFormatError(f"{path}: entry {index}: negative id in 'attributes_id'")
    return attributes


class FashionGenSource(ProductSource):
    """FashionGen: ``FashionGen/{train,val}_info.json``, images in ``FashionGen/{train,val}/``.

    Split ``test`` reads the val files, as the reference does (FashionGen has no public test set).
    """

    dataset = "FashionGen"
    splits = ("train", "val", "test")

    @property
    def _split(self) -> str:
        return "val" if self.split == "test" else self.split

    def annotation_path(self) -> Path:
        return self.root / f"{self._split}_info.json"

    def image_dir(self) -> Path:
        return self.root / self._split

    def parse(self, entry: dict[str, Any], path: Path, index: int) -> Product:
        return Product(
            id=get_field(entry, "id", "int", path, index),
            images=tuple(get_field(entry, "images", "list[str]", path, index)),
            text=join_text(
                get_field(entry, "title", "str", path, index),
                get_field(entry, "description", "str", path, index),
            ),
            attributes=_attributes(entry, path, index),
            category_id=get_field(entry, "category_id", "int", path, index),
            subcategory_id=get_field(entry, "subcategory_id", "int", path, index),
        )


class BigFACADSource(ProductSource):
    """BigFACAD: ``BigFACAD/{train,val}_info.json``, images in ``BigFACAD/images/``."""

    dataset = "BigFACAD"
    splits = ("train", "val")

    def annotation_path(self) -> Path:
        return self.root / f"{self.split}_info.json"

    def image_dir(self) -> Path:
        return self.root / "images"

    def parse(self, entry: dict[str, Any], path: Path, index: int) -> Product:
        return Product(
            id=get_field(entry, "id", "int", path, index),
            images=tuple(get_field(entry, "images", "list[str]", path, index)),
            text=join_text(
                get_field(entry, "color", "str", path, index),
                get_field(entry, "title", "str", path, index),
                get_field(entry, "description", "str", path, index),
            ),
            attributes=_attributes(entry, path, index),
        )


class Fashion200kSource(ProductSource):
    """Fashion200k: ``Fashion200k/{train,test}_info.json`` (no val split), images in ``images/``."""

    dataset = "Fashion200k"
    splits = ("train", "test")

    def annotation_path(self) -> Path:
        return self.root / f"{self.split}_info.json"

    def image_dir(self) -> Path:
        return self.root / "images"

    def parse(self, entry: dict[str, Any], path: Path, index: int) -> Product:
        return Product(
            id=get_field(entry, "id", "int", path, index),
            images=tuple(get_field(entry, "images", "list[str]", path, index)),
            text=join_text(get_field(entry, "title", "str", path, index)),
            attributes=_attributes(entry, path, index),
        )


class PolyvoreItemSource(ProductSource):
    """Polyvore Outfits items for pre-training: ``PolyvoreOutfits/train_info.json``.

    ``images`` is a single path string in this file (a list is accepted too).
    """

    dataset = "PolyvoreOutfits"
    splits = ("train",)

    def annotation_path(self) -> Path:
        return self.root / f"{self.split}_info.json"

    def image_dir(self) -> Path:
        return self.root / "images"

    def parse(self, entry: dict[str, Any], path: Path, index: int) -> Product:
        images = get_field(entry, "images", "str|list[str]", path, index)
        return Product(
            id=get_field(entry, "id", "int", path, index),
            images=(images,) if isinstance(images, str) else tuple(images),
            text=join_text(
                get_field(entry, "title", "str", path, index),
                get_field(entry, "description", "str", path, index),
            ),
            attributes=_attributes(entry, path, index),
        )
