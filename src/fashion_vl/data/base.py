"""What every LightningDataModule here shares (:class:`FashionDataModule`: tokenizer, transforms, image
policy, loaders); one module per family holds the DataModules: ``products.py`` (FashionGen, FashionAll
and the other product-level datasets), ``composed.py`` (FashionIQ, Fashion200k composed retrieval),
``outfits.py`` (Polyvore OCIR), ``tryon.py`` (VITON-HD, Dress Code), ``garment_labels.py`` (the attribute
judge's). Loaders are ``torchdata`` ``StatefulDataLoader``s over :class:`ShardedSampler`, so Lightning
checkpoints their position and a killed run resumes mid-epoch on the same batches."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from lightning import LightningDataModule
from torch.utils.data import Dataset
from torchdata.stateful_dataloader import StatefulDataLoader
from transformers import PreTrainedTokenizerBase

from fashion_vl.data.collate import TextTokenizer
from fashion_vl.data.datasets import ImageReader
from fashion_vl.data.images import DEFAULT_MAX_PIXELS
from fashion_vl.data.samplers import ShardedSampler
from fashion_vl.dist import world_size
from fashion_vl.hub import load_tokenizer

log = logging.getLogger(__name__)


class FashionDataModule(LightningDataModule):
    """What every DataModule here shares: the tokenizer, transforms, image policy and loaders.

    Args:
        tokenizer: hub name or local directory of a fast tokenizer, or a tokenizer object called as one
            (a CLIP-family model's own: :class:`~fashion_vl.models.openclip.OpenClipTokenizer`).
        max_text_length: tokens per text, ``[CLS]``/``[SEP]`` included.
        pad_to_max_length: static text length (for ``torch.compile``) instead of per-batch longest.
        train_transform, eval_transform: callables on ``uint8 [3,H,W]`` tensors (torchvision v2).
        batch_size: per-device training batch; eval_batch_size: per-device evaluation batch.
        num_workers, pin_memory (``None``: when CUDA is available), persistent_workers, prefetch_factor.
        seed: seed of the sampling order and of every sample's augmentation.
        strict_images: a missing/corrupt image is an error instead of being skipped and counted.
        jpeg_draft: decode a JPEG at least twice the size the transform resizes to at reduced size
            (libjpeg's DCT scaling; product datasets with :func:`~fashion_vl.data.transforms
            .resize_crop`); ``false``: decode every image in full, as before.
        max_image_pixels: images with more pixels are skipped and counted like corrupt ones (``None``:
            no limit).
    """

    def __init__(
        self,
        *,
        tokenizer: str | Callable,
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
        jpeg_draft: bool = True,
        max_image_pixels: int | None = DEFAULT_MAX_PIXELS,
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
        self.reader = ImageReader(strict=strict_images, jpeg_draft=jpeg_draft, max_pixels=max_image_pixels)
        self._tokenizer: PreTrainedTokenizerBase | None = None

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        if self._tokenizer is None:
            name = self.tokenizer_name
            self._tokenizer = load_tokenizer(name) if isinstance(name, str) else name
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
        # The loader's own generator: each new iterator draws its base seed from it. From the global one,
        # as by default, a run with workers (persistent: one iterator for the run) and one without (a
        # new iterator each epoch) would leave dropout different streams after the first epoch, so the
        # same run gave other figures with data.num_workers=0. Samples draw from per-sample seeds anyway.
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
            generator=torch.Generator().manual_seed(self.seed),
        )
