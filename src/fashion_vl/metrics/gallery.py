"""Accumulating embeddings over an evaluation epoch, synchronised across ranks by torchmetrics."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from fashion_vl.metrics.retrieval import full_gallery_recall


def _unique_rows(keys: Tensor) -> Tensor:
    """Indices of the first occurrence of each key (duplicates appear when a sampler pads shards)."""
    order = torch.argsort(keys, stable=True)
    sorted_keys = keys[order]
    first = torch.ones_like(sorted_keys, dtype=torch.bool)
    first[1:] = sorted_keys[1:] != sorted_keys[:-1]
    return torch.sort(order[first]).values


class CrossModalGalleryRecall(Metric):
    """Full-gallery image<->text recall@K over everything seen in an epoch.

    ``update`` takes a batch of image embeddings with their product ids and a unique key per image,
    and a batch of text embeddings with their product ids. ``compute`` gathers all ranks' rows
    (torchmetrics pads uneven shards), drops duplicate keys, and returns
    :func:`~fashion_vl.metrics.retrieval.full_gallery_recall`.
    """

    full_state_update = False

    def __init__(self, ks: Sequence[int] = (1, 5, 10), chunk_size: int = 1024, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ks = tuple(ks)
        self.chunk_size = chunk_size
        for name in ("image_emb", "image_ids", "image_keys", "text_emb", "text_ids"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self, image_emb: Tensor, image_ids: Tensor, image_keys: Tensor, text_emb: Tensor, text_ids: Tensor
    ) -> None:
        self.image_emb.append(image_emb.detach().float())
        self.image_ids.append(image_ids.detach())
        self.image_keys.append(image_keys.detach())
        self.text_emb.append(text_emb.detach().float())
        self.text_ids.append(text_ids.detach())

    def compute(self) -> dict[str, float]:
        image_keys = dim_zero_cat(self.image_keys)
        text_ids = dim_zero_cat(self.text_ids)
        keep_i = _unique_rows(image_keys)
        keep_t = _unique_rows(text_ids)
        return full_gallery_recall(
            dim_zero_cat(self.image_emb)[keep_i],
            dim_zero_cat(self.image_ids)[keep_i],
            dim_zero_cat(self.text_emb)[keep_t],
            text_ids[keep_t],
            ks=self.ks,
            chunk_size=self.chunk_size,
        )
