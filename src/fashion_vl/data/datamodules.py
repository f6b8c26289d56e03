"""LightningDataModules. Loaders are ``torchdata`` ``StatefulDataLoader``s over :class:`ShardedSampler`,
so Lightning checkpoints their position and a killed run resumes mid-epoch on the same batches."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning import LightningDataModule
from torch.utils.data import Dataset
from torchdata.stateful_dataloader import StatefulDataLoader
from transformers import PreTrainedTokenizerBase

from fashion_vl.data.collate import ComposedCollator, GalleryCollator, ImageTextCollator, TextTokenizer
from fashion_vl.data.composed import (
    ComposedEvalDataset,
    ComposedTrainDataset,
    fashion200k_eval_items,
    fashion200k_pairs,
    fashioniq_eval_items,
    fashioniq_pairs,
)
from fashion_vl.data.datasets import ImageReader, ProductDataset, ProductGalleryDataset
from fashion_vl.data.formats.fashioniq import FASHIONIQ_CATEGORIES
from fashion_vl.data.formats.fashioniq_cap import read_fashioniq_cap
from fashion_vl.data.formats.polyvore import polyvore_dir, read_ocir, read_polyvore_metadata
from fashion_vl.data.formats.products import Fashion200kSource, ProductSource
from fashion_vl.data.masking import BlockMasking, WholeWordMasking
from fashion_vl.data.outfits import OutfitEvalDataset, OutfitPairDataset, collate_outfits
from fashion_vl.data.prepare.fashioniq_cap import DEFAULT_MAX_REPEAT_SHARE
from fashion_vl.data.samplers import ShardedSampler
from fashion_vl.losses._dist import world_size
from fashion_vl.models.encoders.text import load_tokenizer

log = logging.getLogger(__name__)


class FashionDataModule(LightningDataModule):
    """What every DataModule here shares: the tokenizer, transforms, image policy and loaders.

    Args:
        tokenizer: hub name or local directory of a fast tokenizer.
        max_text_length: tokens per text, ``[CLS]``/``[SEP]`` included.
        pad_to_max_length: static text length (for ``torch.compile``) instead of per-batch longest.
        train_transform, eval_transform: callables on ``uint8 [3,H,W]`` tensors (torchvision v2).
        batch_size: per-device training batch; eval_batch_size: per-device evaluation batch.
        num_workers, pin_memory (``None``: when CUDA is available), persistent_workers, prefetch_factor.
        seed: seed of the sampling order and of every sample's augmentation.
        strict_images: a missing/corrupt image is an error instead of being skipped and counted.
    """

    def __init__(
        self,
        *,
        tokenizer: str,
        train_transform: Callable,
        eval_transform: Callable,
        max_text_length: int = 75,
        pad_to_max_length: bool = False,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        prefetch_factor: int = 2,
        seed: int = 0,
        strict_images: bool = False,
    ) -> None:
        super().__init__()
        self.tokenizer_name = tokenizer
        self.train_transform = train_transform
        self.eval_transform = eval_transform
        self.max_text_length = max_text_length
        self.pad_to_max_length = pad_to_max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = persistent_workers
        self.prefetch_factor = prefetch_factor
        self.seed = seed
        self.reader = ImageReader(strict=strict_images)
        self._tokenizer: PreTrainedTokenizerBase | None = None

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_name)
        return self._tokenizer

    @property
    def text(self) -> TextTokenizer:
        return TextTokenizer(self.tokenizer, self.max_text_length, self.pad_to_max_length)

    def make_loader(
        self,
        dataset: Dataset,
        collate_fn: Callable,
        *,
        train: bool,
        weights: torch.Tensor | None = None,
        epoch_size: int | None = None,
    ) -> StatefulDataLoader:
        batch_size = self.batch_size if train else self.eval_batch_size
        sampler = ShardedSampler(
            len(dataset),
            shuffle=train,
            seed=self.seed,
            weights=weights,
            epoch_size=epoch_size,
            drop_last=train,
        )
        if train and len(sampler) < batch_size:
            raise ValueError(
                f"data.batch_size={batch_size} is larger than the {len(sampler)} training samples each of the "
                f"{world_size()} rank(s) gets per epoch: lower data.batch_size or use more data"
            )
        workers = self.num_workers
        return StatefulDataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collate_fn,
            num_workers=workers,
            pin_memory=self.pin_memory,
            drop_last=train,
            persistent_workers=self.persistent_workers and workers > 0,
            prefetch_factor=self.prefetch_factor if workers > 0 else None,
        )


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
        return_text: batches also carry the raw texts (``text``), for objectives with their own
            tokenizer (UniFashion's LLM) and captioning metrics.
        train_first_image: train on each product's first image only instead of a random one (the
            generation demo: one front shot per text is a sharper target than any of its views).
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
        return_text: bool = False,
        train_first_image: bool = False,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        self.return_text = return_text
        self.train_first_image = train_first_image
        if label not in (None, "subcategory", "category"):
            raise ValueError(f"data.label must be 'subcategory', 'category' or null, not {label!r}")
        self.label = label
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
            tables = [source.read() for source in self.train_sources.values()]
            if self.train_first_image:
                tables = [table.first_images() for table in tables]
            self._check_labels(tables)
            self.train_set = ProductDataset(tables, self.train_transform, self.num_views, self.reader)
            log.info("training products: %s", self.train_set.source_sizes())
        if stage in ("fit", "validate", None) and self.val_set is None and self.val_source is not None:
            self.val_set = ProductGalleryDataset(self.val_source.read(), self.eval_transform, self.reader)
        if stage in ("test", None) and self.test_set is None and self.test_source is not None:
            self.test_set = ProductGalleryDataset(self.test_source.read(), self.eval_transform, self.reader)

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


class PolyvoreOCIRDataModule(FashionDataModule):
    """Polyvore Outfits complementary item retrieval (OCIR) for CSA-Net; no text.

    Args:
        data_dir: the ``datasets/`` folder.
        variant: ``disjoint`` (no item shared between train and test) or ``nondisjoint``.
    """

    def __init__(self, data_dir: str, variant: str = "disjoint", **common: Any) -> None:
        common.setdefault("tokenizer", "none")
        super().__init__(**common)
        self.data_dir = Path(data_dir).expanduser()
        self.variant = variant
        self.train_set: OutfitPairDataset | None = None
        self.eval_set: OutfitEvalDataset | None = None

    @property
    def tokenizer(self) -> None:  # CSA-Net reads images only
        return None

    def setup(self, stage: str | None = None) -> None:
        categories = read_polyvore_metadata(self.data_dir)
        images = polyvore_dir(self.data_dir) / "images"
        if stage in ("fit", None) and self.train_set is None:
            outfits = read_ocir(self.data_dir, self.variant, "train")
            self.train_set = OutfitPairDataset(outfits, images, categories, self.train_transform, self.reader)
        if self.eval_set is None:
            entries = read_ocir(self.data_dir, self.variant, "test")
            self.eval_set = OutfitEvalDataset(entries, images, categories, self.eval_transform, self.reader)

    def train_dataloader(self) -> StatefulDataLoader:
        if self.train_set is None:
            raise RuntimeError("setup('fit') first")
        return self.make_loader(self.train_set, collate_outfits, train=True)

    def val_dataloader(self) -> StatefulDataLoader:
        if self.eval_set is None:
            raise RuntimeError("setup() first")
        return self.make_loader(self.eval_set, collate_outfits, train=False)

    test_dataloader = val_dataloader
