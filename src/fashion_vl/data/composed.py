"""Composed (text-guided) retrieval data: FashionIQ triplets and Fashion200k one-word edits, their
datasets and DataModules (``FashionIQDataModule``, ``Fashion200kComposedDataModule``).

Training items are (reference image, text, target image). Evaluation items carry a *query* part
(reference image, text, the key its positives share, a group), a *gallery* part (an image, its dedupe
key, its positive key, a group), or both, and :class:`~fashion_vl.metrics.composed.ComposedGalleryRecall`
ranks them.

FashionIQ (reference §3b): text = the two captions joined with ", "; queries are the val entries with
``fake_data`` false; the gallery is every distinct ``target_id`` of the category's val entries, fake ones
included (they put the rest of the split into the gallery); ranked per category.

Fashion200k (the TIRG protocol, built here from the test products since the release's query list is not
part of our format): every ordered pair of test products whose titles have the same number of words
and differ in exactly one is a query: the source product's first image with the text
``"replace <old word> with <new word>"``. Its positives are all test images whose product title equals
the target title; the gallery is every test image; the query's own image is never ranked. Training uses
the same construction on the train split, drawing a random image of each product.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from fashion_vl.data.base import FashionDataModule
from fashion_vl.data.collate import ComposedCollator
from fashion_vl.data.datasets import ImageReader, as_key, seeded_transform
from fashion_vl.data.formats.fashioniq import FASHIONIQ_CATEGORIES, fashioniq_image_dir, read_fashioniq
from fashion_vl.data.formats.fashioniq_cap import DEFAULT_MAX_REPEAT_SHARE, read_fashioniq_cap
from fashion_vl.data.formats.products import Fashion200kSource
from fashion_vl.data.images import ImageLoadError
from fashion_vl.data.records import ProductTable
from fashion_vl.data.samplers import SampleKey

log = logging.getLogger(__name__)

Image = tuple[Path, str]  # (image folder, name as written in the annotations)


@dataclass(frozen=True)
class ComposedPair:
    """A training example: reference images (one drawn), text, target images (one drawn)."""

    references: tuple[Image, ...]
    text: str
    targets: tuple[Image, ...]
    target_caption: str | None = None  # UniFashion: a description of the target (Fashion-IQ-Cap)
    target_key: int = -1  # same for every pair with this target (UniFashion's ITM masks its duplicates)


@dataclass(frozen=True)
class ComposedQuery:
    reference: Image
    text: str
    positive: int  # key shared with its positives in the gallery
    group: int = 0
    exclude: int = -1  # gallery key never ranked for this query


@dataclass(frozen=True)
class GalleryImage:
    image: Image
    key: int  # dedupe key
    positive: int
    group: int = 0
    caption: str | None = None  # UniFashion: a description of the image (Fashion-IQ-Cap)


@dataclass(frozen=True)
class ComposedEvalItem:
    query: ComposedQuery | None = None
    gallery: GalleryImage | None = None


def join_captions(captions: Sequence[str]) -> str:
    return ", ".join(c.strip() for c in captions if c.strip())


def fashioniq_pairs(
    data_dir: Path, categories: Iterable[str], captions: Mapping[str, str] | None = None
) -> list[ComposedPair]:
    """Training triplets; with ``captions`` (asin -> description) each pair also carries its target's
    caption, ``""`` where the asin has none."""
    images = fashioniq_image_dir(data_dir)
    keys: dict[str, int] = {}
    return [
        ComposedPair(
            ((images, e.candidate + ".jpg"),),
            join_captions(e.captions),
            ((images, e.target + ".jpg"),),
            None if captions is None else captions.get(e.target, ""),
            keys.setdefault(e.target, len(keys)),
        )
        for category in categories
        for e in read_fashioniq(data_dir, category, "train")
    ]


def fashioniq_eval_items(
    data_dir: Path,
    categories: Iterable[str],
    split: str = "val",
    captions: Mapping[str, str] | None = None,
) -> list[ComposedEvalItem]:
    """Evaluation items; with ``captions`` every gallery image carries its caption (``""`` if none)."""
    images = fashioniq_image_dir(data_dir)
    items = []
    for category in categories:
        for e in read_fashioniq(data_dir, category, split):
            group = e.garment_class if e.garment_class >= 0 else FASHIONIQ_CATEGORIES.index(category)
            query = (
                None
                if e.fake_data
                else ComposedQuery(
                    (images, e.candidate + ".jpg"), join_captions(e.captions), e.target_id, group
                )
            )
            caption = None if captions is None else captions.get(e.target, "")
            items.append(
                ComposedEvalItem(
                    query, GalleryImage((images, e.target + ".jpg"), e.target_id, e.target_id, group, caption)
                )
            )
    return items


def one_word_edits(titles: Sequence[str]) -> list[tuple[int, int, str, str]]:
    """``(source, target, old_word, new_word)`` for every ordered pair of titles of equal length that
    differ in exactly one word (titles compared lower-cased, split on whitespace)."""
    words = [t.lower().split() for t in titles]
    by_shape: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, w in enumerate(words):
        for j in range(len(w)):  # bucket by (length, position of the word that may differ) and the rest
            by_shape[(len(w), j, *w[:j], *w[j + 1 :])].append(i)  # type: ignore[arg-type]
    edits = []
    for key, members in by_shape.items():
        j = key[1]
        for a in members:
            for b in members:
                if a != b and words[a][j] != words[b][j]:
                    edits.append((a, b, words[a][j], words[b][j]))
    return sorted(edits)


def edit_text(old: str, new: str) -> str:
    return f"replace {old} with {new}"


def fashion200k_pairs(table: ProductTable) -> list[ComposedPair]:
    products = table.products
    return [
        ComposedPair(
            tuple((table.image_dir, name) for name in products[a].images),
            edit_text(old, new),
            tuple((table.image_dir, name) for name in products[b].images),
        )
        for a, b, old, new in one_word_edits([p.text for p in products])
    ]


def fashion200k_eval_items(
    table: ProductTable, max_queries: int | None = None, seed: int = 0
) -> list[ComposedEvalItem]:
    products = table.products
    title_id: dict[str, int] = {}
    for p in products:
        title_id.setdefault(p.text.lower(), len(title_id))
    items, first_key = [], {}
    key = 0
    for i, p in enumerate(products):
        first_key[i] = key
        for name in p.images:
            items.append(
                ComposedEvalItem(gallery=GalleryImage((table.image_dir, name), key, title_id[p.text.lower()]))
            )
            key += 1
    edits = one_word_edits([p.text for p in products])
    if max_queries is not None and len(edits) > max_queries:
        edits = sorted(random.Random(seed).sample(edits, max_queries))
    for a, b, old, new in edits:
        query = ComposedQuery(
            (table.image_dir, products[a].images[0]),
            edit_text(old, new),
            title_id[products[b].text.lower()],
            exclude=first_key[a],
        )
        items.append(ComposedEvalItem(query=query))
    return items


def _load(reader: ImageReader, image: Image, bad: list[str]) -> torch.Tensor:
    try:
        return reader.load(*image)
    except ImageLoadError as err:
        if reader.strict:
            raise
        bad.append(f"{err.path}: {err.reason}")
        raise


class ComposedTrainDataset(Dataset):
    """(reference image, text, target image) training samples; a pair with a bad image is replaced by
    another drawn from the sample's seed."""

    def __init__(
        self, pairs: Sequence[ComposedPair], transform: Callable, reader: ImageReader | None = None
    ) -> None:
        if not pairs:
            raise ValueError("no composed-retrieval training pairs")
        self.pairs = list(pairs)
        self.transform = transform
        self.reader = reader or ImageReader()

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: SampleKey | int) -> dict[str, Any]:
        key = as_key(key)
        rng = random.Random(key.seed)
        bad: list[str] = []

        def load(index: int) -> tuple[torch.Tensor, torch.Tensor]:
            pair = self.pairs[index]
            return self.reader.load(*rng.choice(pair.references)), self.reader.load(*rng.choice(pair.targets))

        index, (reference, target) = self.reader.load_or_replace(
            load, key.index, len(self), rng, bad, "composed-retrieval"
        )
        pair = self.pairs[index]
        out = {
            "reference_image": seeded_transform(self.transform, reference, key.seed),
            "target_image": seeded_transform(self.transform, target, key.seed + 1),
            "text": pair.text,
            "bad_images": bad,
            "seed": key.seed,
        }
        if pair.target_caption is not None:
            out["target_caption"] = pair.target_caption
            out["target_key"] = pair.target_key
        return out


class ComposedEvalDataset(Dataset):
    """Evaluation items; an image that fails to load drops that part of the item (counted)."""

    def __init__(
        self, items: Sequence[ComposedEvalItem], transform: Callable, reader: ImageReader | None = None
    ) -> None:
        self.items = list(items)
        self.transform = transform
        self.reader = reader or ImageReader()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: SampleKey | int) -> dict[str, Any]:
        item = self.items[as_key(key).index]
        out: dict[str, Any] = {"bad_images": []}
        for part, record, image in (("query", item.query, item.query and item.query.reference),
                                    ("gallery", item.gallery, item.gallery and item.gallery.image)):  # fmt: skip
            if record is None:
                continue
            try:
                out[part] = (self.transform(_load(self.reader, image, out["bad_images"])), record)
            except ImageLoadError:
                continue  # counted in bad_images; this part of the item is left out
        return out


class _ComposedDataModule(FashionDataModule):
    """Shared loaders of the composed-retrieval DataModules (subclasses build the items)."""

    train_set: ComposedTrainDataset | None
    eval_set: ComposedEvalDataset | None

    def train_dataloader(self) -> StatefulDataLoader:
        if self.train_set is None:
            raise RuntimeError("setup('fit') first")
        return self.make_loader(self.train_set, ComposedCollator(self.text), train=True)

    def val_dataloader(self) -> StatefulDataLoader:
        if self.eval_set is None:
            raise RuntimeError("setup('fit'/'validate') first")
        return self.make_loader(self.eval_set, ComposedCollator(self.text), train=False)

    test_dataloader = val_dataloader


class FashionIQDataModule(_ComposedDataModule):
    """FashionIQ text-guided image retrieval: train on every category's train triplets (the reference's
    ``garment_class: all``), evaluate per category on val (FashionIQ's test split is its val split).

    Args:
        data_dir: the ``datasets/`` folder.
        categories: subset of ``dress``, ``shirt``, ``toptee``.
        target_captions: also read Fashion-IQ-Cap (``FashionIQ-Cap/next_llava.<split>.<category>
            .caption.json``) and give every training target and every gallery image its caption
            (UniFashion phase 2); an image without one gets the empty text, counted in the log.
        drop_degenerate_captions: skip looping captions (:func:`~fashion_vl.data.prepare.fashioniq_cap
            .is_degenerate` above ``caption_max_repeat_share``) as if missing.
    """

    def __init__(
        self,
        data_dir: str,
        categories: Sequence[str] = FASHIONIQ_CATEGORIES,
        target_captions: bool = False,
        drop_degenerate_captions: bool = True,
        caption_max_repeat_share: float = DEFAULT_MAX_REPEAT_SHARE,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        self.data_dir = Path(data_dir).expanduser()
        self.categories = tuple(categories)
        self.target_captions = target_captions
        self.drop_degenerate_captions = drop_degenerate_captions
        self.caption_max_repeat_share = caption_max_repeat_share
        self.train_set = None
        self.eval_set = None

    def _captions(self, split: str) -> dict[str, str] | None:
        if not self.target_captions:
            return None
        captions: dict[str, str] = {}
        for category in self.categories:
            found, counts = read_fashioniq_cap(
                self.data_dir, category, split, self.drop_degenerate_captions, self.caption_max_repeat_share
            )
            captions.update(found)
            log.info(
                "Fashion-IQ-Cap %s.%s: %d captions, skipped %d empty, %d degenerate, %d extra per image",
                category, split, counts.kept, counts.empty, counts.degenerate, counts.duplicate_images,
            )  # fmt: skip
        return captions

    @staticmethod
    def _log_missing(what: str, asins: Sequence[str], captions: Mapping[str, str] | None) -> None:
        if captions is None:
            return
        missing = sum(a not in captions for a in set(asins))
        if missing:
            log.warning(
                "FashionIQ %s: %d of %d images have no caption (empty text)", what, missing, len(set(asins))
            )

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", None) and self.train_set is None:
            captions = self._captions("train")
            pairs = fashioniq_pairs(self.data_dir, self.categories, captions)
            self._log_missing("train targets", [p.targets[0][1][:-4] for p in pairs], captions)
            self.train_set = ComposedTrainDataset(pairs, self.train_transform, self.reader)
        if self.eval_set is None:
            captions = self._captions("val")
            items = fashioniq_eval_items(self.data_dir, self.categories, captions=captions)
            self._log_missing("val gallery", [i.gallery.image[1][:-4] for i in items], captions)
            self.eval_set = ComposedEvalDataset(items, self.eval_transform, self.reader)


class Fashion200kComposedDataModule(_ComposedDataModule):
    """Fashion200k composed retrieval (TIRG protocol; see :mod:`fashion_vl.data.composed`).

    Args:
        data_dir: the ``datasets/`` folder.
        max_eval_queries: evaluate a seeded random subset of the test queries (all when ``None``).
    """

    def __init__(self, data_dir: str, max_eval_queries: int | None = None, **common: Any) -> None:
        super().__init__(**common)
        self.data_dir = Path(data_dir).expanduser()
        self.max_eval_queries = max_eval_queries
        self.train_set = None
        self.eval_set = None

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", None) and self.train_set is None:
            pairs = fashion200k_pairs(Fashion200kSource(self.data_dir, "train").read())
            self.train_set = ComposedTrainDataset(pairs, self.train_transform, self.reader)
        if self.eval_set is None:
            items = fashion200k_eval_items(
                Fashion200kSource(self.data_dir, "test").read(), self.max_eval_queries, self.seed
            )
            self.eval_set = ComposedEvalDataset(items, self.eval_transform, self.reader)
