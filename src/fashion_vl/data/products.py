"""The product-level DataModule: FashionGen, BigFACAD, Fashion200k and Polyvore items, and their mix
(FashionAll, the pre-training data)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from torchdata.stateful_dataloader import StatefulDataLoader

from fashion_vl.data.base import FashionDataModule
from fashion_vl.data.captions import EMPTY_CAPTION_POLICIES, apply_empty_caption_policy
from fashion_vl.data.collate import GalleryCollator, ImageTextCollator
from fashion_vl.data.datasets import ProductDataset, ProductGalleryDataset
from fashion_vl.data.formats.products import FASHIONGEN_CLASSES, IMAGE_STORES, ProductSource
from fashion_vl.data.masking import BlockMasking, WholeWordMasking

log = logging.getLogger(__name__)


class ProductDataModule(FashionDataModule):
    """Product-level data: FashionGen, BigFACAD, Fashion200k, Polyvore items, and their mix.

    With one training source this is e.g. the FashionGen DataModule; with four it is FashionAll, the
    pre-training mix. Each training sample is a *product* (one random image of it, or ``num_views``).

    Args:
        train_sources: name -> :class:`ProductSource` of the training split(s).
        val_source: evaluated as a full gallery (every image of every product against every text).
        test_source: defaults to ``val_source`` (FashionGen's test split is its val split).
        source_weights: dataset name -> share of the training samples; ``None`` samples products
            uniformly (the reference: a shuffled concatenation).
        samples_per_epoch: epoch length over all ranks when sampling by weights (default: all products).
        num_views: images per training sample (2 for multi-view contrastive learning).
        mlm: whole-word masking for MLM (pre-training); adds ``mlm_input_ids``/``mlm_labels``.
        patch_masking: block masking of the feature grid for MPFC; adds ``patch_mask``.
        num_attributes: size of the pseudo-attribute vocabulary for PAC; adds ``attribute_targets``.
        label: ``subcategory`` or ``category``: classification targets (``labels`` in batches); every
            product of the sources must have that id (FashionGen does).
        num_classes: the size of ``label``'s space, which the classification head reads
            (``model.heads.classification.num_classes: ${data.num_classes}``); it must be FashionGen's
            (:data:`FASHIONGEN_CLASSES`: 121 sub-categories, 48 categories).
        return_text: batches also carry the raw texts (``text``), for objectives with their own
            tokenizer (UniFashion's LLM) and captioning metrics.
        train_first_image: train on each product's first image only instead of a random one (the
            generation demo: one front shot per text is a sharper target than any of its views).
        image_store: ``files`` decodes every image from its file; ``array`` serves the images of the
            sources that have an array store (FashionGen: ``fvl-data prepare fashiongen --image-store
            array``) from it, without decoding, and reads the other sources' files.
        empty_captions: ``keep`` or ``skip`` training products with neither title nor description
            (:mod:`fashion_vl.data.captions`; either way they are counted in a warning).
    """

    def __init__(
        self,
        train_sources: Mapping[str, ProductSource] | None = None,
        val_source: ProductSource | None = None,
        test_source: ProductSource | None = None,
        source_weights: Mapping[str, float] | None = None,
        samples_per_epoch: int | None = None,
        num_views: int = 1,
        mlm: WholeWordMasking | None = None,
        patch_masking: BlockMasking | None = None,
        num_attributes: int | None = None,
        label: str | None = None,
        num_classes: int | None = None,
        return_text: bool = False,
        train_first_image: bool = False,
        image_store: str = "files",
        empty_captions: str = "keep",
        **common: Any,
    ) -> None:
        super().__init__(**common)
        if image_store not in IMAGE_STORES:
            raise ValueError(f"data.image_store must be one of {IMAGE_STORES}, not {image_store!r}")
        self.image_store = image_store
        if empty_captions not in EMPTY_CAPTION_POLICIES:
            raise ValueError(f"data.empty_captions must be keep or skip, not {empty_captions!r}")
        self.empty_captions = empty_captions
        self.return_text = return_text
        self.train_first_image = train_first_image
        if label not in (None, *FASHIONGEN_CLASSES):
            raise ValueError(f"data.label must be 'subcategory', 'category' or null, not {label!r}")
        if label is not None and num_classes is not None and num_classes != FASHIONGEN_CLASSES[label]:
            raise ValueError(
                f"data.num_classes={num_classes}, but FashionGen has {FASHIONGEN_CLASSES[label]} {label} "
                f"classes (data.label={label}): set data.num_classes={FASHIONGEN_CLASSES[label]}"
            )
        self.label = label
        self.num_classes = num_classes
        self.mlm = mlm
        self.patch_masking = patch_masking
        self.num_attributes = num_attributes
        self.train_sources = dict(train_sources or {})
        self.val_source = val_source
        self.test_source = test_source or val_source
        self.source_weights = dict(source_weights) if source_weights is not None else None
        self.samples_per_epoch = samples_per_epoch
        self.num_views = num_views
        self.train_set: ProductDataset | None = None
        self.val_set: ProductGalleryDataset | None = None
        self.test_set: ProductGalleryDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", None) and self.train_set is None and self.train_sources:
            tables = [source.read(self.image_store) for source in self.train_sources.values()]
            tables = apply_empty_caption_policy(tables, self.empty_captions)
            if self.train_first_image:
                tables = [table.first_images() for table in tables]
            self._check_labels(tables)
            self.train_set = ProductDataset(tables, self.train_transform, self.num_views, self.reader)
            log.info("training products: %s", self.train_set.source_sizes())
        if stage in ("fit", "validate", None) and self.val_set is None and self.val_source is not None:
            self.val_set = ProductGalleryDataset(
                self.val_source.read(self.image_store), self.eval_transform, self.reader
            )
        if stage in ("test", None) and self.test_set is None and self.test_source is not None:
            self.test_set = ProductGalleryDataset(
                self.test_source.read(self.image_store), self.eval_transform, self.reader
            )

    def _check_labels(self, tables: list) -> None:
        if self.label is None:
            return
        for table in tables:
            bad = [p.id for p in table.products if getattr(p, f"{self.label}_id") < 0]
            if bad:
                raise ValueError(
                    f"data.label={self.label}: {table.dataset}/{table.split} has products without a "
                    f"{self.label}_id (e.g. {bad[0]}); classification needs FashionGen-style labels"
                )

    def train_dataloader(self) -> StatefulDataLoader:
        if self.train_set is None:
            raise RuntimeError("data.train_sources is empty: nothing to train on")
        return self.make_loader(
            self.train_set,
            ImageTextCollator(
                self.text, self.mlm, self.patch_masking, self.num_attributes, self.label, self.return_text
            ),
            train=True,
            weights=self.train_set.sampling_weights(self.source_weights),
            epoch_size=self.samples_per_epoch,
        )

    def val_dataloader(self) -> StatefulDataLoader | list:
        if self.val_set is None:
            return []
        return self.make_loader(
            self.val_set, GalleryCollator(self.text, self.label, self.return_text), train=False
        )

    def test_dataloader(self) -> StatefulDataLoader:
        if self.test_set is None:
            raise RuntimeError("data.test_source and data.val_source are both empty: nothing to evaluate")
        return self.make_loader(
            self.test_set, GalleryCollator(self.text, self.label, self.return_text), train=False
        )
