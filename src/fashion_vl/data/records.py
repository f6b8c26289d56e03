"""Typed records the format readers produce; datasets consume only these, never raw JSON."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fashion_vl.data.array_store import ArrayImageStore


@dataclass(frozen=True, slots=True)
class Product:
    """One product: the pre-training and retrieval unit (several images, one text)."""

    id: int
    images: tuple[str, ...]  # paths relative to the table's image_dir, as written in the JSON
    text: str
    attributes: tuple[int, ...] = ()  # pseudo-attribute ids (PAC targets)
    category_id: int = -1
    subcategory_id: int = -1


@dataclass
class ProductTable:
    """The products of one dataset split and where their images live."""

    dataset: str  # "FashionGen", "BigFACAD", "Fashion200k", "PolyvoreOutfits"
    split: str
    image_dir: Path
    annotation_path: Path
    products: list[Product] = field(default_factory=list)
    store: ArrayImageStore | None = None  # images served from an array store instead of image_dir

    def __len__(self) -> int:
        return len(self.products)

    def first_images(self) -> ProductTable:
        """The same table with each product reduced to its first image (the synthetic data's plain
        front shot on white)."""
        return replace(self, products=[replace(p, images=p.images[:1]) for p in self.products])


@dataclass(frozen=True, slots=True)
class FashionIQTriplet:
    """A FashionIQ entry: reference image, target image, two relative captions."""

    candidate: str  # asin of the reference image
    target: str  # asin of the target image
    captions: tuple[str, ...]
    category: str  # dress | shirt | toptee
    target_id: int = -1  # val only: unique id of the target image
    fake_data: bool = False  # val only: entry exists only to put its target into the gallery
    garment_class: int = -1  # val only: 0 dress, 1 shirt, 2 toptee


@dataclass(frozen=True, slots=True)
class OutfitQuestion:
    """A Polyvore OCIR entry: the outfit's question items and the blank item to retrieve."""

    question: tuple[int, ...]
    blank: int
    fake_data: bool = False  # test only: adds the blank to the gallery, is not a query
