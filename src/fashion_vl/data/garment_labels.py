"""Colour, category and pattern labels of synthetic products, for the attribute judge.

The generator does not write a garment sidecar, but it needs none: every FashionGen-format record
already carries what the judge learns.

- ``category_id`` is the garment's position in :data:`~fashion_vl.data.synth.taxonomy.CATEGORIES`;
- ``attributes_id`` lists the pseudo-attribute ids of the garment's ``attribute_names()``, which
  contain its colour (exactly one colour word: the pattern's accent colour is never listed) and, when
  not plain, its pattern (``solid`` is the one pattern without a vocabulary entry).

So :func:`garment_labels` reads them back from a product record's fields. Labels
are only meaningful for the synthetic data's vocabularies: real FashionGen has 48 categories and other
attribute ids, and its products get ``-1`` (ignored) wherever a value is out of these vocabularies.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from fashion_vl.data.base import FashionDataModule
from fashion_vl.data.datasets import ProductDataset, ProductGalleryDataset, as_key
from fashion_vl.data.formats.products import ProductSource
from fashion_vl.data.images import stack_images
from fashion_vl.data.synth.taxonomy import ATTRIBUTE_INDEX, CATEGORIES, COLOURS, PATTERNS, SUBCATEGORIES

# attribute name -> class names; class ids are positions here
GARMENT_VOCABS: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "category": CATEGORIES,
    "pattern": PATTERNS,
}
_COLOUR_OF_ATTRIBUTE = {ATTRIBUTE_INDEX[c]: i for i, c in enumerate(COLOURS)}
_PATTERN_OF_ATTRIBUTE = {ATTRIBUTE_INDEX[p]: PATTERNS.index(p) for p in PATTERNS[1:]}
_SOLID = PATTERNS.index("solid")


def garment_labels(attributes: Sequence[int], category_id: int) -> dict[str, int]:
    """``colour``, ``category``, ``pattern`` class ids of a synthetic product from its record's
    pseudo-attribute ids and category id; ``-1`` where unknown (ignored in training and accuracy)."""
    colours = {_COLOUR_OF_ATTRIBUTE[a] for a in attributes if a in _COLOUR_OF_ATTRIBUTE}
    patterns = {_PATTERN_OF_ATTRIBUTE[a] for a in attributes if a in _PATTERN_OF_ATTRIBUTE}
    if not attributes:
        pattern = -1
    elif not patterns:
        pattern = _SOLID  # plain garments list no pattern word
    else:
        pattern = patterns.pop() if len(patterns) == 1 else -1
    return {
        "colour": colours.pop() if len(colours) == 1 else -1,
        "category": category_id if 0 <= category_id < len(CATEGORIES) else -1,
        "pattern": pattern,
    }


def _word_pattern(words: Sequence[str]) -> re.Pattern:
    longest_first = sorted(words, key=len, reverse=True)
    return re.compile(r"(?<![\w-])(" + "|".join(re.escape(w) for w in longest_first) + r")(?![\w-])")


_COLOUR_WORDS = _word_pattern(tuple(COLOURS))
_PATTERN_WORDS = _word_pattern(PATTERNS)
_SUB_WORDS = _word_pattern(tuple(sub.name for _, sub in SUBCATEGORIES))
_CATEGORY_OF_SUB = {sub.name: CATEGORIES.index(cat) for cat, sub in SUBCATEGORIES}


def asked_from_texts(texts: Sequence[str], default_pattern: str | None = "solid") -> dict[str, torch.Tensor]:
    """What a generation prompt asks for, in :data:`GARMENT_VOCABS` ids (``-1``: not asked).

    The first colour word, the first pattern word and the first garment noun (mapped to its category;
    ``t-shirt`` wins over ``shirt``) of each text, as in the synthetic titles ("Striped navy cotton
    t-shirt"). A text naming no pattern asks for ``default_pattern`` (synthetic titles name every
    pattern but ``solid``); ``None`` leaves it unasked.
    """
    out = {name: torch.full((len(texts),), -1, dtype=torch.long) for name in GARMENT_VOCABS}
    for i, text in enumerate(texts):
        low = text.lower()
        if m := _COLOUR_WORDS.search(low):
            out["colour"][i] = GARMENT_VOCABS["colour"].index(m.group(1))
        if m := _SUB_WORDS.search(low):
            out["category"][i] = _CATEGORY_OF_SUB[m.group(1)]
        if m := _PATTERN_WORDS.search(low):
            out["pattern"][i] = PATTERNS.index(m.group(1))
        elif default_pattern is not None:
            out["pattern"][i] = PATTERNS.index(default_pattern)
    return out


class GarmentLabelCollator:
    """Batches product samples into ``image`` ``[N,3,H,W]`` and one ``[N]`` long label per attribute.

    Training samples (:class:`ProductDataset`: one image each) and gallery samples (every image of a
    product, :class:`GarmentGalleryDataset`) are both accepted; a gallery product's labels repeat for
    each of its images.
    """

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        images, labels = [], {name: [] for name in GARMENT_VOCABS}
        for s in samples:
            views = s["images"] if "images" in s else [s["image"]]
            images += views
            for name, value in s["labels"].items():
                labels[name] += [value] * len(views)
        batch: dict[str, Any] = {"image": stack_images(images)}
        batch.update({name: torch.tensor(v, dtype=torch.long) for name, v in labels.items()})
        batch["bad_images"] = [path for s in samples for path in s["bad_images"]]
        return batch


class GarmentProductDataset(ProductDataset):
    """:class:`ProductDataset` samples with their :func:`garment_labels` (``labels``)."""

    def __getitem__(self, key: Any) -> dict[str, Any]:
        sample = super().__getitem__(key)
        sample["labels"] = garment_labels(sample["attributes"], sample["category_id"])
        return sample


class GarmentGalleryDataset(ProductGalleryDataset):
    """:class:`ProductGalleryDataset` samples (every image of a product) with their labels."""

    def __getitem__(self, key: Any) -> dict[str, Any]:
        sample = super().__getitem__(key)
        product = self.table.products[as_key(key).index]
        sample["labels"] = garment_labels(product.attributes, product.category_id)
        return sample


class GarmentLabelDataModule(FashionDataModule):
    """Images and colour/category/pattern labels of synthetic products (the attribute judge's data).

    Training samples one random image per product; validation and test read every image. No text.

    Args:
        train_source: products to train on (e.g. synthetic FashionGen ``train``).
        val_source: products to validate on; test_source defaults to it.
        train_first_image: train on each product's first image only (the synthetic data's plain front
            shot on white, the view the generation demo judges) instead of a random one.
        common: see :class:`FashionDataModule` (``tokenizer`` is unused).
    """

    def __init__(
        self,
        train_source: ProductSource | None = None,
        val_source: ProductSource | None = None,
        test_source: ProductSource | None = None,
        train_first_image: bool = False,
        **common: Any,
    ) -> None:
        common.setdefault("tokenizer", "none")
        super().__init__(**common)
        self.train_source = train_source
        self.train_first_image = train_first_image
        self.val_source = val_source
        self.test_source = test_source or val_source
        self.train_set: GarmentProductDataset | None = None
        self.val_set: GarmentGalleryDataset | None = None
        self.test_set: GarmentGalleryDataset | None = None

    @property
    def tokenizer(self) -> None:  # images only
        return None

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", None) and self.train_set is None and self.train_source is not None:
            table = self.train_source.read()
            if self.train_first_image:
                table = table.first_images()
            self.train_set = GarmentProductDataset([table], self.train_transform, reader=self.reader)
        if stage in ("fit", "validate", None) and self.val_set is None and self.val_source is not None:
            self.val_set = GarmentGalleryDataset(self.val_source.read(), self.eval_transform, self.reader)
        if stage in ("test", None) and self.test_set is None and self.test_source is not None:
            self.test_set = GarmentGalleryDataset(self.test_source.read(), self.eval_transform, self.reader)

    def train_dataloader(self) -> StatefulDataLoader:
        if self.train_set is None:
            raise RuntimeError("data.train_source is empty: nothing to train on")
        return self.make_loader(self.train_set, GarmentLabelCollator(), train=True)

    def val_dataloader(self) -> StatefulDataLoader | list:
        if self.val_set is None:
            return []
        return self.make_loader(self.val_set, GarmentLabelCollator(), train=False)

    def test_dataloader(self) -> StatefulDataLoader:
        if self.test_set is None:
            raise RuntimeError("data.test_source and data.val_source are both empty: nothing to evaluate")
        return self.make_loader(self.test_set, GarmentLabelCollator(), train=False)
