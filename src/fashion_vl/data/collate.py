"""Collation, and the batch keys every task reads (the data/task contract).

Training batches (:class:`ImageTextCollator`):

================  =====================  ==================================================
key               type                   meaning
================  =====================  ==================================================
image             float ``[B,3,H,W]``    one random image of each product
image_view1       float ``[B,3,H,W]``    a second random image (``num_views=2``, for MVC)
input_ids         long ``[B,L]``         WordPiece ids, ``[CLS] ... [SEP]`` then padding
attention_mask    long ``[B,L]``         1 on real tokens
product_id        long ``[B]``
category_id       long ``[B]``           -1 where the dataset has none
subcategory_id    long ``[B]``           -1 where the dataset has none
attributes        ``list[tuple[int]]``   pseudo-attribute ids of each product
bad_images        ``list[str]``          images skipped while building the batch
================  =====================  ==================================================

Gallery batches (:class:`GalleryCollator`, evaluation) keep the text keys and replace the image keys
by every image of the batch's products: ``image`` ``[N,3,H,W]``, ``image_product_id`` ``[N]`` and
``image_key`` ``[N]`` (unique per image of the split).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase


class TextTokenizer:
    """Batch tokenisation to ``input_ids``/``attention_mask``.

    Args:
        tokenizer: a fast Hugging Face tokenizer.
        max_length: tokens per text including ``[CLS]``/``[SEP]`` (75 for FashionViL pre-training).
        pad_to_max_length: pad every batch to ``max_length`` (static shapes for ``torch.compile``)
            instead of to the longest text in the batch.
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, max_length: int, pad_to_max_length: bool = False
    ) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.padding = "max_length" if pad_to_max_length else "longest"

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            list(texts),
            padding=self.padding,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
            return_token_type_ids=False,
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def _long(samples: Sequence[dict[str, Any]], key: str) -> torch.Tensor:
    return torch.tensor([s[key] for s in samples], dtype=torch.long)


class ImageTextCollator:
    """Batches :class:`~fashion_vl.data.datasets.ProductDataset` samples."""

    def __init__(self, text: TextTokenizer) -> None:
        self.text = text

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {"image": torch.stack([s["image"] for s in samples])}
        for key in sorted(k for k in samples[0] if k.startswith("image_view")):
            batch[key] = torch.stack([s[key] for s in samples])
        batch.update(self.text([s["text"] for s in samples]))
        for key in ("product_id", "category_id", "subcategory_id"):
            batch[key] = _long(samples, key)
        batch["attributes"] = [tuple(s["attributes"]) for s in samples]
        batch["bad_images"] = [path for s in samples for path in s["bad_images"]]
        return batch


class GalleryCollator:
    """Batches :class:`~fashion_vl.data.datasets.ProductGalleryDataset` samples, flattening images."""

    def __init__(self, text: TextTokenizer) -> None:
        self.text = text

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        images = [img for s in samples for img in s["images"]]
        batch: dict[str, Any] = {
            "image": torch.stack(images) if images else torch.empty(0),
            "image_product_id": torch.tensor(
                [s["product_id"] for s in samples for _ in s["images"]], dtype=torch.long
            ),
            "image_key": torch.tensor([k for s in samples for k in s["image_keys"]], dtype=torch.long),
        }
        batch.update(self.text([s["text"] for s in samples]))
        for key in ("product_id", "category_id", "subcategory_id"):
            batch[key] = _long(samples, key)
        batch["bad_images"] = [path for s in samples for path in s["bad_images"]]
        return batch
