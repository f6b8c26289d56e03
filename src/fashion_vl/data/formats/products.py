"""Product-level datasets: FashionGen, BigFACAD, Fashion200k and Polyvore Outfits items.

A *source* names one split of one dataset under a data folder and reads it on demand, so Hydra can
instantiate sources in a config without touching the disk. The text of each product follows the
reference loader: FashionGen ``title . description``; BigFACAD ``color . title . description``;
Fashion200k ``title``; Polyvore ``title . description``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from fashion_vl.data.formats._json import DataFormatError, MissingDataFileError, get_field, load_entries
from fashion_vl.data.records import Product, ProductTable

# The pseudo-attribute vocabulary of the reference's annotation files (``attributes_id`` in
# [0, 2232)) and its PAC head; FashionGen's label spaces (reference §3c, §4). Defined here only.
NUM_PSEUDO_ATTRIBUTES = 2232
FASHIONGEN_CLASSES = {"subcategory": 121, "category": 48}


def join_text(*parts: str) -> str:
    """Sentences joined by '. ' (WordPiece splits on the full stop either way)."""
    return ". ".join(p.strip().rstrip(".") for p in parts if p and p.strip())


IMAGE_STORES = ("files", "array")


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

    def array_store_index(self) -> Path | None:
        """Where this split's array store would be (:mod:`fashion_vl.data.array_store`); ``None`` for a
        dataset that has none (its images are always read from files)."""
        return None

    def read(self, image_store: str = "files") -> ProductTable:
        """The split's products. ``image_store="array"`` serves the images from the split's array store
        where the dataset has one (FashionGen), from files otherwise."""
        if image_store not in IMAGE_STORES:
            raise ValueError(f"data.image_store must be one of {IMAGE_STORES}, not {image_store!r}")
        table = self._read_table()
        index = self.array_store_index() if image_store == "array" else None
        if index is None:
            return table
        if not index.is_file():
            raise MissingDataFileError(
                f"data.image_store=array: {index} not found. Write it with `fvl-data prepare "
                f"{self.dataset.lower()} --image-store array` (synthetic data: `fvl-data synth "
                "--image-store both`), or set data.image_store=files."
            )
        from fashion_vl.data.array_store import ArrayImageStore  # numpy and torch: not for --help

        return replace(table, store=ArrayImageStore(index))

    def _read_table(self) -> ProductTable:
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
    Its array store (``read(image_store="array")``) is ``FashionGen/{train,val}_images.{npy,json}``,
    written by ``fvl-data prepare fashiongen --image-store array`` from the release's HDF5 pixels.
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

    def array_store_index(self) -> Path:
        return self.root / f"{self._split}_images.json"

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


def fashiongen_label_names(data_dir: str | Path, label: str) -> list[str]:
    """FashionGen's ``category`` or ``subcategory`` names by id, from ``FashionGen/categories.json`` (written
    by ``fvl-data prepare fashiongen`` and ``fvl-data synth``: name -> id per label)."""
    path = Path(data_dir).expanduser() / "FashionGen" / "categories.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: it names FashionGen's labels (rerun `fvl-data prepare fashiongen` or "
            "`fvl-data synth`, which write it)"
        )
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))[label]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f'{path}: expected {{"{label}": {{name: id}}}} ({err!r})') from None
    names = {int(i): str(n) for n, i in mapping.items()}
    if sorted(names) != list(range(len(names))):
        raise ValueError(f"{path}: the {label} ids are not 0..{len(names) - 1}")
    return [names[i] for i in range(len(names))]


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
