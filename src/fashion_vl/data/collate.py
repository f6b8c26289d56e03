"""Collation, and the batch keys every task reads (the data/task contract).

Training batches (:class:`ImageTextCollator`):

================  =====================  ==================================================
key               type                   meaning
================  =====================  ==================================================
image             uint8 ``[B,3,H,W]``    one random image of each product (channels-last strides,
                                         like every image batch: ``images.stack_images``)
image_view1       uint8 ``[B,3,H,W]``    a second random image (``num_views=2``, for MVC)
input_ids         long ``[B,L]``         WordPiece ids, ``[CLS] ... [SEP]`` then padding
attention_mask    long ``[B,L]``         1 on real tokens
product_id        long ``[B]``
category_id       long ``[B]``           -1 where the dataset has none
subcategory_id    long ``[B]``           -1 where the dataset has none
attributes        ``list[tuple[int]]``   pseudo-attribute ids of each product
bad_images        ``list[str]``          images skipped while building the batch
mlm_input_ids     long ``[B,L]``         (pre-training) ``input_ids`` with whole words masked
mlm_labels        long ``[B,L]``         (pre-training) original ids where masked, -100 elsewhere
patch_mask        bool ``[B,N]``         (pre-training) grid cells to mask for MPFC
attribute_targets float ``[B,A]``        (pre-training) PAC soft targets, zeros without attributes
text              ``list[str]``          (``return_text``) the raw texts (UniFashion's LLM targets)
================  =====================  ==================================================

Composed retrieval batches (:class:`ComposedCollator`): training ``reference_image``, ``target_image``
``[B,3,H,W]`` and the text keys; evaluation ``query_image`` ``[Q,3,H,W]`` with the text keys and
``query_positive``/``query_group``/``query_exclude`` ``[Q]``, and ``gallery_image`` ``[G,3,H,W]`` with
``gallery_key``/``gallery_positive``/``gallery_group`` ``[G]`` (either part may be empty). With target
captions (UniFashion phase 2, ``FashionIQDataModule(target_captions=true)``) training batches add
``target_input_ids``/``target_attention_mask`` ``[B,L]``, ``has_target_caption`` bool ``[B]`` and
``target_key`` ``[B]``, and evaluation batches ``gallery_input_ids``/``gallery_attention_mask`` ``[G,L]``
and ``gallery_has_caption`` ``[G]`` (a missing caption is the empty text).

Gallery batches (:class:`GalleryCollator`, evaluation) keep the text keys and replace the image keys
by every image of the batch's products: ``image`` ``[N,3,H,W]``, ``image_product_id`` ``[N]``,
``image_key`` ``[N]`` (unique per image of the split), ``image_subcategory_id`` ``[N]`` and
``image_text_index`` ``[N]`` (the row of the image's product text in the batch). With a DataModule
``label`` (classification), training batches carry ``labels`` ``[B]`` and gallery batches
``image_labels`` ``[N]``. With ``return_text`` both carry ``text``, the raw product texts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from fashion_vl.data.images import stack_images
from fashion_vl.data.masking import BlockMasking, WholeWordMasking, soft_attribute_targets


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
    """Batches :class:`~fashion_vl.data.datasets.ProductDataset` samples.

    With ``mlm``, ``patch_masking`` or ``num_attributes`` it also builds the pre-training inputs; every
    random choice comes from the samples' own seeds, so a batch is the same whoever collates it.
    """

    def __init__(
        self,
        text: TextTokenizer,
        mlm: WholeWordMasking | None = None,
        patch_masking: BlockMasking | None = None,
        num_attributes: int | None = None,
        label: str | None = None,
        return_text: bool = False,
    ) -> None:
        self.text = text
        self.label = label
        self.return_text = return_text
        self.mlm = mlm.bind(text.tokenizer) if mlm is not None else None
        self.patch_masking = patch_masking
        self.num_attributes = num_attributes

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {"image": stack_images([s["image"] for s in samples])}
        for key in sorted(k for k in samples[0] if k.startswith("image_view")):
            batch[key] = stack_images([s[key] for s in samples])
        batch.update(self.text([s["text"] for s in samples]))
        if self.return_text:
            batch["text"] = [s["text"] for s in samples]
        for key in ("product_id", "category_id", "subcategory_id"):
            batch[key] = _long(samples, key)
        batch["attributes"] = [tuple(s["attributes"]) for s in samples]
        batch["bad_images"] = [path for s in samples for path in s["bad_images"]]
        if self.label is not None:
            batch["labels"] = batch[f"{self.label}_id"]
        seeds = [s["seed"] for s in samples]
        if self.mlm is not None:
            batch["mlm_input_ids"], batch["mlm_labels"] = self.mlm(
                batch["input_ids"], batch["attention_mask"], seeds
            )
        if self.patch_masking is not None:
            batch["patch_mask"] = self.patch_masking(seeds)
        if self.num_attributes is not None:
            batch["attribute_targets"] = soft_attribute_targets(
                batch["attributes"], self.num_attributes, [s["product_id"] for s in samples]
            )
        return batch


class GalleryCollator:
    """Batches :class:`~fashion_vl.data.datasets.ProductGalleryDataset` samples, flattening images."""

    def __init__(self, text: TextTokenizer, label: str | None = None, return_text: bool = False) -> None:
        self.text = text
        self.label = label
        self.return_text = return_text

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        images = [img for s in samples for img in s["images"]]
        batch: dict[str, Any] = {
            "image": stack_images(images),
            "image_product_id": torch.tensor(
                [s["product_id"] for s in samples for _ in s["images"]], dtype=torch.long
            ),
            "image_key": torch.tensor([k for s in samples for k in s["image_keys"]], dtype=torch.long),
            "image_subcategory_id": torch.tensor(
                [s["subcategory_id"] for s in samples for _ in s["images"]], dtype=torch.long
            ),
            "image_text_index": torch.tensor(
                [i for i, s in enumerate(samples) for _ in s["images"]], dtype=torch.long
            ),
        }
        batch.update(self.text([s["text"] for s in samples]))
        if self.return_text:
            batch["text"] = [s["text"] for s in samples]
        for key in ("product_id", "category_id", "subcategory_id"):
            batch[key] = _long(samples, key)
        if self.label is not None:
            batch["image_labels"] = batch[f"{self.label}_id"][batch["image_text_index"]]
        batch["bad_images"] = [path for s in samples for path in s["bad_images"]]
        return batch


class ComposedCollator:
    """Batches composed-retrieval samples (training pairs or evaluation items)."""

    def __init__(self, text: TextTokenizer) -> None:
        self.text = text

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        bad = [path for s in samples for path in s["bad_images"]]
        if "reference_image" in samples[0]:
            batch = {
                "reference_image": stack_images([s["reference_image"] for s in samples]),
                "target_image": stack_images([s["target_image"] for s in samples]),
                **self.text([s["text"] for s in samples]),
            }
            if "target_caption" in samples[0]:  # UniFashion phase 2
                caption = self.text([s["target_caption"] for s in samples])
                batch["target_input_ids"] = caption["input_ids"]
                batch["target_attention_mask"] = caption["attention_mask"]
                batch["has_target_caption"] = torch.tensor([bool(s["target_caption"]) for s in samples])
                batch["target_key"] = _long(samples, "target_key")
            batch["bad_images"] = bad
            return batch
        queries = [s["query"] for s in samples if "query" in s]
        gallery = [s["gallery"] for s in samples if "gallery" in s]
        batch = {"bad_images": bad}
        batch["query_image"] = stack_images([img for img, _ in queries])
        batch.update(
            self.text([q.text for _, q in queries])
            if queries
            else {
                "input_ids": torch.empty(0, 0, dtype=torch.long),
                "attention_mask": torch.empty(0, 0, dtype=torch.long),
            }
        )
        for field in ("positive", "group", "exclude"):
            batch[f"query_{field}"] = torch.tensor([getattr(q, field) for _, q in queries], dtype=torch.long)
        batch["gallery_image"] = stack_images([img for img, _ in gallery])
        for field in ("key", "positive", "group"):
            batch[f"gallery_{field}"] = torch.tensor(
                [getattr(g, field) for _, g in gallery], dtype=torch.long
            )
        if gallery and gallery[0][1].caption is not None:  # UniFashion phase 2: the targets' captions
            caption = self.text([g.caption for _, g in gallery])
            batch["gallery_input_ids"] = caption["input_ids"]
            batch["gallery_attention_mask"] = caption["attention_mask"]
            batch["gallery_has_caption"] = torch.tensor([bool(g.caption) for _, g in gallery])
        return batch
