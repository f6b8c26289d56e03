"""Polyvore Outfits OCIR data: (question item, blank item) pairs for training, outfits for evaluation,
and their DataModule (``PolyvoreOCIRDataModule``).

Training (CSA-Net, reference §3d, with its quirk fixed): each sample is one outfit from which two
*distinct* items are drawn as (question, blank) from the sample's seed, so the pair changes every
epoch; the reference drew one pair per outfit when loading, fixed for the whole run, and could draw
the same item twice. Evaluation: every question item of an entry, the entry's blank, their categories.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from fashion_vl.data.base import FashionDataModule
from fashion_vl.data.datasets import ImageReader, as_key, seeded_transform
from fashion_vl.data.formats._json import DataFormatError
from fashion_vl.data.formats.polyvore import polyvore_dir, read_ocir, read_polyvore_metadata
from fashion_vl.data.images import ImageLoadError, stack_images
from fashion_vl.data.records import OutfitQuestion
from fashion_vl.data.samplers import SampleKey


def _category(categories: dict[int, int], item: int, where: str) -> int:
    if item not in categories:
        raise DataFormatError(f"{where}: item {item} has no entry in polyvore_item_metadata.json")
    return categories[item]


class OutfitPairDataset(Dataset):
    """Training: two distinct items of an outfit as (question, blank), redrawn each epoch."""

    def __init__(
        self,
        outfits: Sequence[OutfitQuestion],
        image_dir: Path,
        categories: dict[int, int],
        transform: Callable,
        reader: ImageReader | None = None,
    ) -> None:
        self.outfits = [tuple(dict.fromkeys((*o.question, o.blank))) for o in outfits]
        self.outfits = [items for items in self.outfits if len(items) >= 2]
        if not self.outfits:
            raise ValueError("no training outfit has two distinct items")
        for items in self.outfits:
            for item in items:
                _category(categories, item, "OCIR training outfits")
        self.image_dir = image_dir
        self.categories = categories
        self.transform = transform
        self.reader = reader or ImageReader()

    def __len__(self) -> int:
        return len(self.outfits)

    def __getitem__(self, key: SampleKey | int) -> dict[str, Any]:
        key = as_key(key)
        rng = random.Random(key.seed)
        bad: list[str] = []

        def load(index: int) -> tuple[int, int, torch.Tensor, torch.Tensor]:
            question, blank = rng.sample(self.outfits[index], 2)
            images = (self.reader.load(self.image_dir, f"{q}.jpg") for q in (question, blank))
            return question, blank, *images

        _, (question, blank, q_img, b_img) = self.reader.load_or_replace(
            load, key.index, len(self), rng, bad, "Polyvore OCIR"
        )
        return {
            "question_image": seeded_transform(self.transform, q_img, key.seed),
            "blank_image": seeded_transform(self.transform, b_img, key.seed + 1),
            "question_category": self.categories[question],
            "blank_category": self.categories[blank],
            "blank_id": blank,
            "bad_images": bad,
        }


class OutfitEvalDataset(Dataset):
    """Evaluation entries: all question images, the blank image, categories, ``fake_data``."""

    def __init__(
        self,
        entries: Sequence[OutfitQuestion],
        image_dir: Path,
        categories: dict[int, int],
        transform: Callable,
        reader: ImageReader | None = None,
    ) -> None:
        self.entries = list(entries)
        for e in self.entries:
            for item in (*e.question, e.blank):
                _category(categories, item, "OCIR test entries")
        self.image_dir = image_dir
        self.categories = categories
        self.transform = transform
        self.reader = reader or ImageReader()

    def __len__(self) -> int:
        return len(self.entries)

    def _image(self, item: int, bad: list[str]) -> torch.Tensor | None:
        try:
            return self.transform(self.reader.load(self.image_dir, f"{item}.jpg"))
        except ImageLoadError as err:
            if self.reader.strict:
                raise
            bad.append(f"{err.path}: {err.reason}")
            return None

    def __getitem__(self, key: SampleKey | int) -> dict[str, Any]:
        entry = self.entries[as_key(key).index]
        bad: list[str] = []
        questions = [(self._image(q, bad), self.categories[q]) for q in entry.question]
        questions = [(img, cat) for img, cat in questions if img is not None]
        return {
            "question_images": [img for img, _ in questions],
            "question_categories": [cat for _, cat in questions],
            "blank_image": self._image(entry.blank, bad),
            "blank_category": self.categories[entry.blank],
            "blank_id": entry.blank,
            "fake_data": entry.fake_data,
            "bad_images": bad,
        }


def collate_outfits(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Training batches: ``question_image``/``blank_image`` ``[B,3,H,W]``, ``question_category``,
    ``blank_category``, ``blank_id`` ``[B]``. Evaluation batches: ``question_image`` ``[M,3,H,W]`` with
    ``question_category`` and ``question_entry`` (row of its entry) ``[M]``; per entry ``blank_image``,
    ``blank_category``, ``blank_id``, ``fake_data`` (entries whose blank failed to load are dropped)."""
    bad = [p for s in samples for p in s["bad_images"]]
    if "question_image" in samples[0]:
        return {
            "question_image": stack_images([s["question_image"] for s in samples]),
            "blank_image": stack_images([s["blank_image"] for s in samples]),
            "question_category": torch.tensor([s["question_category"] for s in samples]),
            "blank_category": torch.tensor([s["blank_category"] for s in samples]),
            "blank_id": torch.tensor([s["blank_id"] for s in samples]),
            "bad_images": bad,
        }
    samples = [s for s in samples if s["blank_image"] is not None]
    images = [img for s in samples for img in s["question_images"]]
    return {
        "question_image": stack_images(images),
        "question_category": torch.tensor(
            [c for s in samples for c in s["question_categories"]], dtype=torch.long
        ),
        "question_entry": torch.tensor(
            [i for i, s in enumerate(samples) for _ in s["question_images"]], dtype=torch.long
        ),
        "blank_image": stack_images([s["blank_image"] for s in samples]),
        "blank_category": torch.tensor([s["blank_category"] for s in samples], dtype=torch.long),
        "blank_id": torch.tensor([s["blank_id"] for s in samples], dtype=torch.long),
        "fake_data": torch.tensor([s["fake_data"] for s in samples], dtype=torch.bool),
        "bad_images": bad,
    }


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
