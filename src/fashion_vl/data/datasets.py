"""Datasets over the readers' records. Images that fail to load are skipped and reported, not fatal."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch.utils.data import Dataset

from fashion_vl.data.images import DEFAULT_MAX_PIXELS, ImageLoadError, load_image
from fashion_vl.data.records import Product, ProductTable
from fashion_vl.data.samplers import SampleKey
from fashion_vl.data.transforms import draft_size

log = logging.getLogger(__name__)
T = TypeVar("T")

Transform = Callable[[torch.Tensor], torch.Tensor]


class UnloadableProductError(RuntimeError):
    """None of a product's images could be loaded."""


class TooManyBadImagesError(RuntimeError):
    """So many consecutive images failed that the image folder is probably wrong."""


def as_key(key: SampleKey | int) -> SampleKey:
    """Plain integer indexing (notebooks, tests) uses the index as the sample seed."""
    return key if isinstance(key, SampleKey) else SampleKey(int(key), int(key))


def seeded_transform(transform: Transform, image: torch.Tensor, seed: int) -> torch.Tensor:
    """Apply a random torchvision transform with its randomness drawn from ``seed``.

    A transform with a ``seeded(image, seed)`` method is asked for that. Otherwise: torchvision's
    random transforms use the global torch generator; forking it keeps the caller's
    stream (dropout, task sampling in the main process with ``num_workers=0``) untouched. Only the CPU
    generator is seeded: ``torch.manual_seed`` would also queue lazy CUDA/XPU/MTIA seeding, which
    records a stack trace per call (measured: ~7% of a CPU demo pre-training step).
    """
    seeded = getattr(transform, "seeded", None)
    if seeded is not None:  # draws from a private generator (transforms.ResizeCropFlip): no fork needed
        return seeded(image, seed)
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        return transform(image)


class ImageReader:
    """Loads a product's images, skipping bad ones (or failing at once when ``strict``).

    Args:
        strict: raise on the first missing/corrupt/oversized image instead of skipping it.
        max_consecutive_failures: give up (image folder probably wrong) after this many in a row.
        jpeg_draft: decode JPEGs at reduced size where the transform resizes to a fixed size anyway
            (:func:`~fashion_vl.data.transforms.draft_size`); ``False``: always decode in full.
        max_pixels: images with more pixels are skipped like corrupt ones (``None``: no limit).
    """

    def __init__(
        self,
        strict: bool = False,
        max_consecutive_failures: int = 50,
        jpeg_draft: bool = True,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.strict = strict
        self.max_consecutive_failures = max_consecutive_failures
        self.jpeg_draft = jpeg_draft
        self.max_pixels = max_pixels

    def strict_error(self, err: ImageLoadError) -> ImageLoadError:
        return ImageLoadError(
            err.path, err.reason + " (data.strict_images=true; set it false to skip bad images)"
        )

    def load_or_replace(
        self, load: Callable[[int], T], index: int, size: int, rng: random.Random, bad: list[str], what: str
    ) -> tuple[int, T]:
        """``(index, load(index))``, or when ``load`` meets a bad image (its path appended to ``bad``,
        a warning logged) the same for another index drawn from ``rng``, so batches keep their size.
        Gives up after ``max_consecutive_failures`` bad items in a row (the folder is probably wrong)."""
        for _ in range(self.max_consecutive_failures):
            try:
                return index, load(index)
            except ImageLoadError as err:
                if self.strict:
                    raise self.strict_error(err) from err
                bad.append(f"{err.path}: {err.reason}")
                log.warning("%s item %d skipped: %s: %s", what, index, err.path, err.reason)
                index = rng.randrange(size)
        raise TooManyBadImagesError(
            f"{self.max_consecutive_failures} {what} items in a row had a bad image; is the data folder "
            "right? Last failures:\n  " + "\n  ".join(bad[-5:])
        )

    def draft_size(self, transform: object) -> tuple[int, int] | None:
        """The reduced JPEG decoding size for images that go through ``transform`` (``None``: full)."""
        return draft_size(transform) if self.jpeg_draft else None

    def load(
        self, source: ProductTable | Path, name: str, draft: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """``uint8 [3, H, W]`` of image ``name`` of ``source`` (a table, or an image folder): out of the
        table's array store when it has one, else decoded from its file (a large JPEG at reduced size when
        ``draft`` gives the size the transform resizes to); raises :class:`ImageLoadError`, also for an
        image above this reader's pixel limit."""
        if isinstance(source, ProductTable):
            if source.store is not None:
                return source.store.load(name)
            source = source.image_dir
        return load_image(source, name, draft, self.max_pixels)

    def first_loadable(
        self,
        table: ProductTable,
        product: Product,
        order: Sequence[int],
        bad: list[str],
        draft: tuple[int, int] | None = None,
        loaded: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The first image of ``product`` in ``order`` that loads; failed paths are appended to ``bad``.
        ``loaded``: images already decoded for this sample, by name (filled in here), so two views of
        the same image decode it once (the transforms never write into their input)."""
        for i in order:
            name = product.images[i]
            if loaded is not None and name in loaded:
                return loaded[name]
            try:
                image = self.load(table, name, draft)
                if loaded is not None:
                    loaded[name] = image
                return image
            except ImageLoadError as err:
                if self.strict:
                    raise self.strict_error(err) from err
                bad.append(f"{err.path}: {err.reason}")
        raise UnloadableProductError(f"{table.dataset} product {product.id}: no loadable image")


class ProductDataset(Dataset):
    """Product-level training samples: ``num_views`` random images of a product, its text, its labels.

    Views are drawn with replacement among the product's images (the reference's ``double_view``).
    A product whose drawn image is bad falls back to its other images; a product with none is replaced
    by another product drawn from the sample's seed, so batches keep their size (static shapes, equal
    batches on every rank). Each sample lists the paths it skipped in ``bad_images``.
    """

    def __init__(
        self,
        tables: Sequence[ProductTable],
        transform: Transform,
        num_views: int = 1,
        reader: ImageReader | None = None,
    ) -> None:
        self.tables = list(tables)
        self.transform = transform
        self.num_views = num_views
        self.reader = reader or ImageReader()
        self.draft = self.reader.draft_size(transform)
        self.index = [(t, p) for t, table in enumerate(self.tables) for p in range(len(table))]
        if not self.index:
            raise ValueError("no products in " + ", ".join(str(t.annotation_path) for t in self.tables))

    def __len__(self) -> int:
        return len(self.index)

    def product(self, index: int) -> tuple[ProductTable, Product]:
        t, p = self.index[index]
        table = self.tables[t]
        return table, table.products[p]

    def source_sizes(self) -> dict[str, int]:
        return {f"{t.dataset}/{t.split}": len(t) for t in self.tables}

    def sampling_weights(self, source_weights: dict[str, float] | None) -> torch.Tensor | None:
        """Per-product weights giving each source its share (``None``: uniform over products)."""
        if source_weights is None:
            return None
        lookup = {k.lower(): float(v) for k, v in source_weights.items()}
        per_table = []
        for table in self.tables:
            share = lookup.get(table.dataset.lower())
            if share is None:
                raise KeyError(
                    f"data.source_weights has no entry for {table.dataset} (has: {sorted(source_weights)})"
                )
            per_table.append(share / len(table))
        return torch.tensor([per_table[t] for t, _ in self.index], dtype=torch.double)

    def __getitem__(self, key: SampleKey | int) -> dict[str, Any]:
        key = as_key(key)
        rng = random.Random(key.seed)
        bad: list[str] = []
        index = key.index
        for _ in range(self.reader.max_consecutive_failures):
            table, product = self.product(index)
            try:
                n = len(product.images)
                views, loaded = [], {}
                for _ in range(self.num_views):
                    first = rng.randrange(n)
                    order = [first, *range(n)]
                    views.append(self.reader.first_loadable(table, product, order, bad, self.draft, loaded))
                break
            except UnloadableProductError:
                index = rng.randrange(len(self))
        else:
            raise TooManyBadImagesError(
                f"{self.reader.max_consecutive_failures} products in a row had no loadable image; is the image "
                f"folder right? Last failures:\n  " + "\n  ".join(bad[-5:])
            )
        sample: dict[str, Any] = {
            "image": seeded_transform(self.transform, views[0], key.seed),
            "text": product.text,
            "product_id": product.id,
            "attributes": product.attributes,
            "category_id": product.category_id,
            "subcategory_id": product.subcategory_id,
            "bad_images": bad,
            "seed": key.seed,
        }
        for v in range(1, self.num_views):
            sample[f"image_view{v}"] = seeded_transform(self.transform, views[v], key.seed + v)
        return sample


class ProductGalleryDataset(Dataset):
    """Evaluation over products: every image of a product, and its text, in file order.

    ``image_keys`` number every image of the split uniquely, so duplicates can be dropped after a
    distributed gather.
    """

    def __init__(self, table: ProductTable, transform: Transform, reader: ImageReader | None = None) -> None:
        self.table = table
        self.transform = transform
        self.reader = reader or ImageReader()
        self.draft = self.reader.draft_size(transform)
        self.first_key = [0]
        for p in table.products:
            self.first_key.append(self.first_key[-1] + len(p.images))

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, key: SampleKey | int) -> dict[str, Any]:
        index = as_key(key).index
        product = self.table.products[index]
        images, keys, bad = [], [], []
        for i in range(len(product.images)):
            try:
                image = self.reader.first_loadable(self.table, product, [i], bad, self.draft)
                images.append(self.transform(image))
                keys.append(self.first_key[index] + i)
            except UnloadableProductError:
                continue
        return {
            "images": images,
            "image_keys": keys,
            "text": product.text,
            "product_id": product.id,
            "category_id": product.category_id,
            "subcategory_id": product.subcategory_id,
            "bad_images": bad,
        }
